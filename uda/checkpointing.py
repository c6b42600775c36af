"""Checkpoints written atomically: `last.ckpt` (updated at each validation and at the end) and
`best.ckpt` (best target-val mIoU so far; NOT a fair number to report: it selects on the
evaluation set). A crash mid-write leaves the previous file intact (temp file + rename).
Each checkpoint carries `checkpoint["uda"] = {"kind": "last"|"best", "step", "val_mIoU",
"config": <resolved YAML>}`.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl


class AtomicCheckpoint(pl.Callback):
    def __init__(self, dirpath: str | Path, config_yaml: str = ""):
        self.dirpath = Path(dirpath)
        self.config_yaml = config_yaml
        self.best = float("-inf")
        self._kind = "last"

    def _save(self, trainer: pl.Trainer, kind: str) -> None:
        self._kind = kind
        final = self.dirpath / f"{kind}.ckpt"
        tmp = self.dirpath / f".{kind}.ckpt.tmp"
        trainer.save_checkpoint(tmp, weights_only=False)  # all ranks call; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, final)
        trainer.strategy.barrier("uda-checkpoint")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        results = getattr(pl_module, "last_results", None) or {}
        step = getattr(pl_module, "iteration", trainer.global_step)  # iterations, not opt steps
        checkpoint["uda"] = {"kind": self._kind, "step": step,
                             "val_mIoU": results.get("mIoU"), "config": self.config_yaml}

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state_dict):
        self.best = state_dict.get("best", self.best)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        miou = (pl_module.last_results or {}).get("mIoU")
        if miou is not None and miou > self.best:
            self.best = miou
            self._save(trainer, "best")
        self._save(trainer, "last")

    def on_train_end(self, trainer, pl_module):
        self.dirpath.mkdir(parents=True, exist_ok=True)
        self._save(trainer, "last")
