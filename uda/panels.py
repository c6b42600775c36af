"""What the loggers show besides scalars (rank 0 only):

* `PanelLogger`: a callback logging image panels (W&B images, TensorBoard images, or PNG files
  under `run_dir/panels/<key>/step<N>.png` for loggers without an image API).
* `log_iou_table(logger, results, step)`: per-class IoU as a W&B table, else as scalars.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.loggers.wandb import WandbLogger as _WandbLogger  # isinstance checks only
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from datamodules.image_io import write_png_atomic
from uda.evaluation.export import overlay
from uda.logging_setup import _as_loggers
from uda.models.modes import eval_mode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def log_iou_table(logger, results: Mapping[str, Any], step: int) -> None:
    """Log `results["per_class_iou"]` ({class: IoU | None}) for a logger, a list of loggers
    (e.g. `trainer.loggers`) or False/None (nothing). WandbLogger: a table "val/per_class_iou"
    with columns (class, IoU), None kept as an empty cell. Other loggers: scalars
    `val_iou/<class>` at `step`, None skipped. Rank 0 only."""
    if rank_zero_only.rank != 0:
        return
    per_class = dict(results.get("per_class_iou") or {})
    for lg in _as_loggers(logger):
        if isinstance(lg, _WandbLogger):
            data = [[name, None if v is None else float(v)] for name, v in per_class.items()]
            lg.log_table(key="val/per_class_iou", columns=["class", "IoU"], data=data, step=step)
        else:
            metrics = {f"val_iou/{n}": float(v) for n, v in per_class.items() if v is not None}
            if metrics:
                lg.log_metrics(metrics, step=step)
                lg.save()


# ----------------------------------------------------------------------------------------------
# Image panels
# ----------------------------------------------------------------------------------------------

def _to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(B,3,H,W) float in [0,1] (clamped) -> B arrays (H,W,3) uint8."""
    arr = (images.detach().float().clamp(0, 1) * 255.0).round().byte()
    return list(arr.permute(0, 2, 3, 1).cpu().numpy())


def _display_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _shrink(images: torch.Tensor, max_side: int) -> torch.Tensor:
    size = _display_size(*images.shape[-2:], max_side)
    if size == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False,
                         antialias=True)


def _grid(images: list[np.ndarray]) -> np.ndarray:
    """Stack (H,W,3) uint8 images vertically, one row each, padded right with black."""
    width = max(im.shape[1] for im in images)
    rows = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0))) for im in images]
    return np.concatenate(rows, axis=0)


def _safe_key(key: str) -> str:
    return re.sub(r"[^\w.-]+", "_", key).strip("_") or "panel"


class PanelLogger(pl.Callback):
    """Log image panels to the trainer's loggers (rank 0 only).

    Training: every `every_n_steps` iterations (`pl_module.iteration` if present, else
    global_step; <= 0 disables) calls `pl_module.panel_images(batch)` on the training batch if
    the module defines it; the returned {key: (B,3,H,W) float in [0,1]} gives the panels
    "panels/<key>" (first `max_images`). It runs under no_grad with every submodule in eval mode,
    each module's train/eval flag restored afterwards.
    Validation: once per validation (first batch of the first loader), with
    `pl_module.predict_labels(images, mask size)`, the panel "panels/val_prediction": one row per
    image [input | prediction overlay | ground-truth overlay] in the Cityscapes palette, images
    denormalised with `mean`/`std`.
    Panels are shrunk so no side exceeds `max_side`. WandbLogger: `log_image` (a list of images,
    captions from batch["name"]); TensorBoardLogger: `add_images`; any other logger: one PNG
    `run_dir/panels/<key>/step<N>.png` (default run_dir: trainer.default_root_dir). A failure
    only warns.
    """

    def __init__(self, every_n_steps: int, max_images: int = 4, *, run_dir: Path | None = None,
                 mean: Iterable[float] = IMAGENET_MEAN, std: Iterable[float] = IMAGENET_STD,
                 alpha: float = 0.5, max_side: int = 512):
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self.every_n_steps = int(every_n_steps)
        self.max_images = int(max_images)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.mean = torch.tensor(tuple(mean), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(tuple(std), dtype=torch.float32).view(1, 3, 1, 1)
        self.alpha = alpha
        self.max_side = int(max_side)
        self._last_train_step = -1

    @staticmethod
    def _step(trainer, pl_module) -> int:
        return int(getattr(pl_module, "iteration", trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = self._step(trainer, pl_module)
        if (self.every_n_steps <= 0 or step % self.every_n_steps or step == self._last_train_step
                or not trainer.is_global_zero or not hasattr(pl_module, "panel_images")):
            return
        self._last_train_step = step
        try:
            with eval_mode(pl_module), torch.no_grad():
                panels = pl_module.panel_images(batch)
            for key, images in panels.items():
                rows = _to_uint8(_shrink(images[: self.max_images], self.max_side))
                self.log_panel(trainer, key, rows, step)
        except Exception as e:  # noqa: BLE001 - panels are never worth stopping training
            warnings.warn(f"PanelLogger: training panels at step {step} failed: {e!r}")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        if (batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking
                or not trainer.is_global_zero or not hasattr(pl_module, "predict_labels")):
            return
        step = self._step(trainer, pl_module)
        try:
            rows = self.prediction_rows(pl_module, batch)
            captions = [str(n) for n in batch.get("name", [])][: len(rows)]
            self.log_panel(trainer, "val_prediction", rows, step,
                           captions if len(captions) == len(rows) else None)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"PanelLogger: validation panel at step {step} failed: {e!r}")

    def prediction_rows(self, pl_module, batch) -> list[np.ndarray]:
        """[input | prediction overlay | ground-truth overlay] rows (H,3W,3) uint8."""
        images = batch["image"][: self.max_images]
        masks = batch["mask"][: self.max_images]
        with torch.no_grad():
            pred = pl_module.predict_labels(images, tuple(masks.shape[-2:]))
        size = _display_size(*masks.shape[-2:], self.max_side)
        rgb = images.detach().float().cpu() * self.std + self.mean
        rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=True)

        def labels(t: torch.Tensor) -> np.ndarray:
            t = F.interpolate(t[:, None].float().cpu(), size=size, mode="nearest")[:, 0]
            return t.long().numpy()

        rows = []
        for im, p, g in zip(_to_uint8(rgb), labels(pred), labels(masks)):
            rows.append(np.concatenate([im, overlay(im, p, self.alpha),
                                        overlay(im, g, self.alpha)], axis=1))
        return rows

    def log_panel(self, trainer, key: str, images: list[np.ndarray], step: int,
                  captions: list[str] | None = None) -> None:
        """Send (H,W,3) uint8 images as panel `key` to every logger of the trainer."""
        png_written = False
        for lg in trainer.loggers:
            if isinstance(lg, _WandbLogger):
                extra = {"caption": captions} if captions else {}
                lg.log_image(key=f"panels/{key}", images=list(images), step=step, **extra)
            elif isinstance(lg, TensorBoardLogger):
                same = len({im.shape for im in images}) == 1
                batch = np.stack(images) if same else _grid(images)[None]
                lg.experiment.add_images(f"panels/{key}", batch, global_step=step,
                                         dataformats="NHWC")
            elif not png_written:
                root = self.run_dir or Path(trainer.default_root_dir)
                path = root / "panels" / _safe_key(key) / f"step{step}.png"
                write_png_atomic(Image.fromarray(_grid(images)), path)
                png_written = True
