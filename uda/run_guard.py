"""Runs are append-only: `uda train` without --resume never writes into a run directory that
already holds a run (checked on rank 0 before anything is written), and a run that fails before
its first checkpoint leaves no stub folder behind (`StartGuard`)."""
from __future__ import annotations

import shutil
from pathlib import Path

from uda.config import ConfigError


def previous_run_files(run_dir: Path) -> list[str]:
    """The files of an earlier run in `run_dir` (relative paths, sorted): config.yaml,
    results.json, checkpoints/*.ckpt, logs/metrics.csv."""
    run_dir = Path(run_dir)
    found = [run_dir / name for name in ("config.yaml", "results.json", "logs/metrics.csv")]
    found = [p for p in found if p.is_file()]
    found += (run_dir / "checkpoints").glob("*.ckpt")
    return sorted(str(p.relative_to(run_dir)) for p in found)


def refuse_overwrite(run_dir: Path, resume: str | None) -> None:
    """ConfigError when `run_dir` holds an earlier run and no --resume was given."""
    if resume:
        return
    files = previous_run_files(run_dir)
    if files:
        shown = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "")
        raise ConfigError(f"run.dir={run_dir} already holds a run ({shown}); nothing was written. "
                          "Continue it with --resume auto, or start a new run with another "
                          "run.dir=...")


# What a run writes in its run.dir (uda.train, the loggers, the panels).
RUN_ENTRIES = ("config.yaml", "results.json", "checkpoints", "logs", "tensorboard", "wandb",
               "panels")


class StartGuard:
    """Remembers, before a run creates anything, which of its paths already exist; `undo()`
    (after a failure) removes what the run created, unless a checkpoint exists: the new entries
    of RUN_ENTRIES, new files inside the ones that existed, then the run directory and the
    parents it created, when empty. A path that existed before, or anything else in the folder,
    is never removed. Rank 0 only."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir).absolute()
        self.new_dirs = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        self.entries = [self.run_dir / name for name in RUN_ENTRIES]
        self.existed = {p for p in self.entries if p.exists() or p.is_symlink()}
        self.existed |= {q for p in self.existed if p.is_dir() for q in p.rglob("*")}

    def has_checkpoint(self) -> bool:
        return any((self.run_dir / "checkpoints").glob("*.ckpt"))

    def _created(self) -> list[Path]:
        """New entries (whole), and new files and folders inside the entries that existed
        (children before their folder)."""
        found: list[Path] = []
        for p in self.entries:
            if p not in self.existed:
                found += [p] if p.exists() or p.is_symlink() else []
            elif p.is_dir() and not p.is_symlink():
                found += [q for q in sorted(p.rglob("*"), reverse=True) if q not in self.existed]
        return found

    def undo(self) -> bool:
        """Remove what the failed start created; False when a checkpoint exists (nothing is
        removed) or when the run had created nothing."""
        if self.has_checkpoint():
            return False
        created = self._created()
        for path in created:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        removed = bool(created)
        for folder in self.new_dirs:  # deepest first; stops at the first one not empty
            try:
                folder.rmdir()
            except OSError:
                break
            removed = True
        return removed
