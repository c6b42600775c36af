"""Small atomic writers of text and JSON files (temp file + rename: a crash never leaves a
half-written file, and a failed write, e.g. a full disk, removes its temp file). PNG images:
`datamodules.image_io.write_png_atomic`."""
from __future__ import annotations

import json
import os
from pathlib import Path


def temp_path(path: Path) -> Path:
    """The hidden temp file next to `path` that an atomic write renames onto it."""
    return path.with_name(f".{path.name}.tmp")


def remove_quietly(path: Path) -> None:
    """Remove a partial temp file; a failure to do so must not hide the original error."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
