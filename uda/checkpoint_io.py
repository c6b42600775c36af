"""Reading a uda checkpoint: the file itself (`read_checkpoint`), the run's config it records
(`config_for`) and its `uda` entry (`recorded_info`). Writing is `uda.checkpointing`'s job.

Checkpoints are read with `torch.load(weights_only=True)`: no code from a checkpoint file is ever
executed. A missing, unreadable or foreign file is the user's: `DatasetError` naming the file.
"""
from __future__ import annotations

from pathlib import Path

import torch

from datamodules.image_io import DatasetError
from uda.config import Config, ConfigError, load_config


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated/corrupt files raise various errors
        raise DatasetError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e}); "
                           "it may be corrupt or truncated: use another (e.g. last.ckpt)") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DatasetError(f"{path}: not a uda/Lightning checkpoint (no 'state_dict')")
    return ckpt


def config_for(ckpt: dict, ckpt_path, config_file=None, overrides=None) -> Config:
    """The config a checkpoint was trained with, updated by `config_file` and `overrides`."""
    text = (ckpt.get("uda") or {}).get("config")
    if not text and config_file is None:
        raise ConfigError(f"{ckpt_path}: checkpoint holds no config; pass --config FILE")
    return load_config(config_file, overrides, base_text=text, base_name=f"{ckpt_path} (config)")


def peek_checkpoint(path: Path) -> dict | None:
    """Checkpoint `path` memory-mapped (tensors are read only when used), or None when it is
    absent, unreadable or not a dict: for looking at a run's own files, never an error."""
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable
        return None
    return ckpt if isinstance(ckpt, dict) else None


def recorded_info(path: Path) -> dict:
    """The `uda` entry of checkpoint `path` without its config and RNG states ({} when absent or
    unreadable; the weights are not read)."""
    info = (peek_checkpoint(path) or {}).get("uda") or {}
    return {k: v for k, v in info.items() if k not in ("config", "rng")}
