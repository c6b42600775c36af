"""Checkpoints written atomically: `last.ckpt` (updated at each validation, every
`every_n_iterations` and at the end), `best.ckpt` (best target-val mIoU so far; NOT a fair
number to report: it selects on the evaluation set) and, when periodic, `iter-NNNNNNN.ckpt`.
A crash mid-write leaves the previous file intact (temp file + rename); a failed write (full
disk, a second Ctrl-C) removes its temp file. Before each save the parameters and buffers are
checked (all ranks together): a NaN/Inf state raises `NonFiniteStateError` and nothing is
written, so every checkpoint holds finite values.

`best.ckpt` is only ever replaced by a better model: the best so far is the larger of the value
saved in the resumed checkpoint's callback state and the `val_mIoU` recorded in an existing
best.ckpt (read when the callback is created), so neither a resume nor a lost update lowers it.

Each checkpoint carries `checkpoint["uda"] = {"kind": "last"|"best"|"periodic", "step"
(iterations), "val_mIoU", "config": <resolved YAML>, "rng": {...}}`. The RNG states (torch,
numpy, python; plain tensors/lists so `torch.load(weights_only=True)` reads them) are restored
on resume; together with the samplers' position-derived seeds this makes a resumed run continue
the uninterrupted one.
"""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from datamodules.atomic_write import remove_quietly, temp_path
from uda.checkpoint_io import recorded_info
from uda.nonfinite import check_finite_state


def recorded_best(path: Path) -> float:
    """The `val_mIoU` recorded in checkpoint `path`, or -inf when absent/unreadable (then any new
    best may replace it)."""
    miou = recorded_info(path).get("val_mIoU")
    return float("-inf") if miou is None else float(miou)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])],
             "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss),
                         float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def log_checkpoint_artifact(trainer: pl.Trainer, path: Path, kind: str) -> None:
    """Log `path` as a wandb model artifact on every WandbLogger (failures only warn)."""
    from pytorch_lightning.loggers import WandbLogger
    for logger in trainer.loggers:
        if not isinstance(logger, WandbLogger):
            continue
        try:
            import wandb
            run = logger.experiment
            artifact = wandb.Artifact(f"model-{run.id}", type="model",
                                      metadata={"kind": kind, "file": path.name})
            artifact.add_file(str(path))
            run.log_artifact(artifact, aliases=[kind, path.stem])
        except Exception as e:  # never let logging stop training
            warnings.warn(f"could not log {path} as a wandb artifact: {e}", RuntimeWarning)


class AtomicCheckpoint(pl.Callback):
    def __init__(self, dirpath: str | Path, config_yaml: str = "", every_n_iterations: int = 0,
                 log_artifacts: bool = False):
        """log_artifacts: also log each written checkpoint as a wandb artifact (rank 0)."""
        self.dirpath = Path(dirpath)
        self.log_artifacts = log_artifacts
        self.config_yaml = config_yaml
        self.every = every_n_iterations
        self.best = recorded_best(self.dirpath / "best.ckpt")
        self._kind = "last"

    def save(self, trainer: pl.Trainer, kind: str, name: str | None = None) -> Path:
        """Write `<name or kind>.ckpt` atomically (every rank must call; rank 0 writes), unless
        the model state is non-finite (NonFiniteStateError, nothing written)."""
        check_finite_state(trainer, trainer.lightning_module)
        self._kind = kind
        final = self.dirpath / f"{name or kind}.ckpt"
        tmp = temp_path(final)
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        try:
            trainer.save_checkpoint(tmp, weights_only=False)  # all ranks call; rank 0 writes
            if trainer.is_global_zero:
                os.replace(tmp, final)
        except BaseException:
            if trainer.is_global_zero:
                remove_quietly(tmp)
            raise
        if trainer.is_global_zero and self.log_artifacts:
            log_checkpoint_artifact(trainer, final, kind)
        trainer.strategy.barrier("uda-checkpoint")
        return final

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        results = getattr(pl_module, "last_results", None) or {}
        step = getattr(pl_module, "iteration", trainer.global_step)  # iterations, not opt steps
        checkpoint["uda"] = {"kind": self._kind, "step": step, "val_mIoU": results.get("mIoU"),
                             "config": self.config_yaml, "rng": rng_state()}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        rng = (checkpoint.get("uda") or {}).get("rng")
        if rng:
            set_rng_state(rng)

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state_dict):
        self.best = max(self.best, state_dict.get("best", self.best))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        it = getattr(pl_module, "iteration", trainer.global_step)
        if self.every and it % self.every == 0 and it < trainer.max_steps // max(
                1, getattr(pl_module, "optimizer_steps_per_iteration", 1)):
            self.save(trainer, "periodic", f"iter-{it:07d}")
            self.save(trainer, "last")

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        miou = (pl_module.last_results or {}).get("mIoU")
        if miou is not None and miou > self.best:
            self.best = miou
            self.save(trainer, "best")
        self.save(trainer, "last")

    def on_train_end(self, trainer, pl_module):
        self.save(trainer, "last")
