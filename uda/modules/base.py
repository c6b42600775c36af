"""The module every training recipe subclasses: validation, image spaces, and the shared
pieces it is composed of.

Validation protocol: predict at the inference size of the batch images (whole image or sliding
window, optional flip and multi-scale averaging: `eval_options`, the keyword arguments of
`uda.evaluation.inference.predict_labels`), upsample to the label's native resolution, argmax,
accumulate one dataset-level confusion matrix (summed over ranks). `self.last_results` holds
the latest results dict (see `uda.metrics.results`). With `export_dir` set, each prediction is
also written there: `labelIds/<name>_labelIds.png` (official-evaluator ready) and
`color/<name>_color.png`. Subclasses implement `training_step`
and `configure_optimizers`.

The pieces: `uda.modules.steps.GuardedSteps` (optimizer steps: backward_step with the
non-finite guard; task_step for the task network, which adds the debiasing terms);
`uda.modules.optim.TaskOptimizer` (the task optimizer and the poly schedule);
`uda.modules.debias.DebiasMixin` (data.debias: recipes compute their source CE with
`source_loss`); training panels are drawn by `uda.panels` from `panel_images`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import nn

from uda.evaluation.export import write_prediction
from uda.evaluation.inference import predict_labels
from uda.methods import OptimConfig
from uda.metrics.results import results_dict
from uda.metrics.stateful import ConfusionMatrixMetric
from uda.models.modes import unintended_eval_modules
from uda.modules.debias import DebiasMixin
from uda.modules.optim import TaskOptimizer
from uda.modules.steps import GuardedSteps


@dataclass
class RecipeParts:
    """What `uda.build` hands a recipe module's `build(settings, parts)` (settings: the method's
    `method.<name>` config section, None for methods without one):
    segmenter() a new task network (weights loaded, BN options applied) at each call;
    common: SegmentationModule's keyword arguments (max_steps, optim, eval options, ...);
    domain_means(frames, size): (source, target) mean thumbnails (3, *size) in [-1, 1] of up to
    `frames` whole training frames per domain, and the number of frames averaged."""
    segmenter: Callable[[], nn.Module]
    class_names: Sequence[str]
    common: dict
    domain_means: Callable[[int, tuple[int, int]], tuple[torch.Tensor, torch.Tensor, int]]


def forward_keeping_buffers(module: nn.Module, *args):
    """module(*args) in its current mode, on copies of its buffers: a training-mode forward
    whose BatchNorm running statistics and batch counters must not move (the module's own
    buffers are untouched; the copies are discarded). Normalisation still uses the batch's
    statistics, so the gradients are those of a training forward."""
    buffers = {name: buf.clone() for name, buf in module.named_buffers()}
    return torch.func.functional_call(module, buffers, args)


class SegmentationModule(GuardedSteps, TaskOptimizer, DebiasMixin, pl.LightningModule):
    #: optimizer.step() calls per training iteration (Lightning's global_step counts those)
    optimizer_steps_per_iteration = 1

    def __init__(self, segmenter: nn.Module, class_names: Sequence[str], max_steps: int = 1,
                 optim: OptimConfig = OptimConfig(),
                 class_subsets: Mapping[str, Sequence[int]] | None = None,
                 eval_options: Mapping[str, Any] | None = None, channels_last: bool = False,
                 image_mean: Sequence[float] = (0.485, 0.456, 0.406),
                 image_std: Sequence[float] = (0.229, 0.224, 0.225)):
        super().__init__()
        self.automatic_optimization = False  # every recipe reads as explicit optimizer steps
        self.segmenter = segmenter
        self.max_steps, self.optim = max_steps, optim
        self.channels_last = channels_last
        # the datamodule's normalisation, to show images (panels) and to translate them
        self.register_buffer("mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)
        self.class_names = list(class_names)
        self.eval_options = dict(eval_options or {})
        self.export_dir: Path | None = None
        self.class_subsets = dict(class_subsets or {})
        self.val_metric = ConfusionMatrixMetric(len(self.class_names))
        self.last_results: dict | None = None
        self.last_results_step = -1  # iteration at which last_results were computed
        self.biased: nn.Module | None = None
        self.lff_stats = None  # uda.losses.lff.LfFWeights with data.debias.lff (setup_lff)
        self.lff_ema: float | None = None
        self.debias_settings: dict = {}
        self._codec = None  # a frozen DRANet translator; not part of the state_dict

    def setup(self, stage: str) -> None:
        dm = self._trainer.datamodule if self._trainer is not None else None
        if stage == "fit" and getattr(dm, "source_train", None) is not None:
            self.setup_lff(len(dm.source_train))  # before a resume restores them
        if self.channels_last:  # NHWC: faster convolutions on tensor cores / recent CPUs
            self.to(memory_format=torch.channels_last)

    def on_train_start(self) -> None:
        # Replaces Lightning's "Found N module(s) in eval mode" warning (filtered in uda.console),
        # which also counts the modules frozen by design; this one names only the others.
        stray = unintended_eval_modules(self)
        if stray:
            rank_zero_warn(f"{len(stray)} module(s) in eval mode at the start of training that "
                           f"train() would switch to training: {', '.join(stray[:8])}"
                           + (", ..." if len(stray) > 8 else ""))

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        # Lightning runs only this hook when the datamodule has one too: apply its augmentations
        dm = self._trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "augment") and self._trainer.training:
            batch = dm.augment(batch, self.iteration)
        if self.channels_last:
            batch = _to_channels_last(batch)
        return batch

    def to_display(self, x: torch.Tensor) -> torch.Tensor:
        """Dataset-normalised images -> RGB in [0, 1]."""
        return (x.float() * self.std + self.mean).clamp(0, 1)

    def from_display(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> dataset-normalised images."""
        return (x - self.mean) / self.std

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Dataset-normalised image -> [-1, 1] (the translator's space)."""
        return (x * self.std + self.mean) * 2.0 - 1.0

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> dataset-normalised image (what the segmenter expects)."""
        return ((u + 1.0) / 2.0 - self.mean) / self.std

    @torch.no_grad()
    def panel_images(self, batch) -> dict[str, torch.Tensor]:
        """Images for the logger's training panels, (B,3,H,W) in [0, 1]."""
        return {"source": self.to_display(batch["source"]["image"]),
                "target": self.to_display(batch["target"]["image"])}

    @property
    def iteration(self) -> int:
        """Training iterations (batches) done so far, whatever the number of optimizers."""
        return self.global_step // self.optimizer_steps_per_iteration

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmenter(images)

    def predict_labels(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B,3,h,w) -> (B,H,W) int64 trainIds at `size`, with the configured protocol."""
        return predict_labels(self.segmenter, images, size, num_classes=len(self.class_names),
                              **self.eval_options)

    def validation_step(self, batch, batch_idx):
        pred = self.predict_labels(batch["image"], tuple(batch["mask"].shape[-2:]))
        self.val_metric.update(pred, batch["mask"])
        if self.export_dir is not None:
            for name, p in zip(batch["name"], pred.cpu().numpy().astype("uint8")):
                write_prediction(p, self.export_dir / "labelIds", name, "labelIds")
                write_prediction(p, self.export_dir / "color", name, "color")

    def on_validation_epoch_end(self):
        cm, num_images = self.val_metric.compute()  # summed over ranks
        self.val_metric.reset()
        results = results_dict(cm, num_images, self.class_names, self.class_subsets)
        self.last_results, self.last_results_step = results, self.iteration
        miou = results["mIoU"] if results["mIoU"] is not None else 0.0
        self.log("val/mIoU", miou, prog_bar=True, sync_dist=False, rank_zero_only=True)
        for name, v in results["per_class_iou"].items():
            if v is not None:
                self.log(f"val_iou/{name}", v, sync_dist=False, rank_zero_only=True)


def _to_channels_last(batch):
    """Every 4-D tensor in a (nested) dict batch -> channels_last memory format."""
    if isinstance(batch, dict):
        return {k: _to_channels_last(v) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor) and batch.dim() == 4:
        return batch.contiguous(memory_format=torch.channels_last)
    return batch
