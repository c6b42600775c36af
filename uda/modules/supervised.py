"""Supervised recipes: source-only (train on labelled source, evaluate on target) and the oracle
(the same recipe fed labelled target-train images as its "source"; toy benchmark only)."""
from __future__ import annotations

from uda.modules.base import RecipeParts, SegmentationModule


class SourceOnly(SegmentationModule):
    """Constructor: see SegmentationModule (segmenter, class names, max_steps, optim, ...)."""

    def configure_optimizers(self):
        opt, sched = self.task_optimizer()
        return [opt], [sched]

    def training_step(self, batch, batch_idx):
        opt, sched = self.optimizers(), self.lr_schedulers()
        loss_seg = self.source_loss(self.segmenter(batch["source"]["image"]), batch["source"])
        stepped, terms = self.task_step(opt, {"seg": loss_seg}, batch)
        if not stepped:
            return
        sched.step()
        self.log("train/loss_seg", loss_seg.detach(), prog_bar=True)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "seg"})
        self.log("train/lr", sched.get_last_lr()[0])


def build(settings: None, parts: RecipeParts) -> SourceOnly:
    """source_only and oracle: the same recipe (the datamodule feeds the oracle labelled target
    images as its source)."""
    return SourceOnly(parts.segmenter(), parts.class_names, **parts.common)
