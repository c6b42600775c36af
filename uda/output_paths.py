"""Output paths are checked before any work: a run directory, `--output FILE` or `--export DIR`
that cannot be written fails at once with one ConfigError naming the path and the fix, instead
of a traceback after the model was built, the data loaded or the evaluation run.

Standard library only (the CLI calls these before importing torch). Nothing is created: a
missing folder is writable when its nearest existing ancestor is a writable folder.
"""
from __future__ import annotations

import os
from pathlib import Path

from uda.config import ConfigError


def _nearest_existing(path: Path) -> Path:
    """`path` itself or its nearest ancestor that exists (as anything: folder, file, link)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be created in `folder` (created with its parents when missing), or None."""
    found = _nearest_existing(folder.absolute())
    if not found.is_dir():
        return f"{found} is a file, not a folder"
    if not os.access(found, os.W_OK | os.X_OK):
        return f"{found} is not writable" if found == folder.absolute() else \
            f"{found} is not writable (cannot create {folder})"
    return None


def check_output_dir(path: str | os.PathLike, label: str, fix: str) -> None:
    """ConfigError unless files can be written in folder `path` (existing or to be created).
    label: how the user gave it, e.g. "run.dir" or "--export"; fix: what to do instead."""
    path = Path(path)
    problem = _folder_problem(path)
    if problem:
        raise ConfigError(f"{_shown(label, path)}: cannot write there: {problem}; {fix}")


def check_output_file(path: str | os.PathLike, label: str, fix: str) -> None:
    """ConfigError unless file `path` can be written (created, or replaced atomically)."""
    path = Path(path)
    if path.is_dir():
        problem: str | None = f"{path} is a folder, not a file"
    else:
        problem = _folder_problem(path.parent)
    if problem:
        raise ConfigError(f"{_shown(label, path)}: cannot write there: {problem}; {fix}")


def _shown(label: str, path: Path) -> str:
    """`key=value` for a config key, `--option value` for a command-line option."""
    return f"{label} {path}" if label.startswith("-") else f"{label}={path}"


def check_run_dir(path: str | os.PathLike) -> None:
    """`run.dir` must be a writable folder (existing or to be created)."""
    check_output_dir(path, "run.dir", "choose a writable run.dir=... (or fix the folder's "
                     "permissions)")
