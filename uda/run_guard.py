"""Runs are append-only: `uda train` without --resume never writes into a run directory that
already holds a run. The check runs on rank 0 before anything is written."""
from __future__ import annotations

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
