"""Supervised recipes: source-only (train on labelled source, evaluate on target) and the oracle
(the same recipe fed labelled target-train images as its "source"; toy benchmark only)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from uda.losses import segmentation_ce
from uda.modules.base import SegmentationModule, build_optimizer, poly_lambda


class SourceOnly(SegmentationModule):
    def __init__(self, segmenter: nn.Module, class_names: Sequence[str], max_steps: int,
                 optim: str = "sgd", lr: float = 2.5e-4, momentum: float = 0.9,
                 weight_decay: float = 5e-4, poly_power: float = 0.9,
                 class_subsets: Mapping[str, Sequence[int]] | None = None,
                 eval_options: Mapping[str, Any] | None = None, channels_last: bool = False,
                 image_mean: Sequence[float] = (0.485, 0.456, 0.406),
                 image_std: Sequence[float] = (0.229, 0.224, 0.225)):
        super().__init__(segmenter, class_names, class_subsets, eval_options, channels_last,
                         image_mean, image_std)
        self.automatic_optimization = False
        self.max_steps = max_steps
        self.optim_args = dict(name=optim, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.poly_power = poly_power

    def configure_optimizers(self):
        opt = build_optimizer(self.segmenter.param_groups(self.optim_args["lr"]), **self.optim_args)
        return [opt], [LambdaLR(opt, poly_lambda(self.max_steps, self.poly_power))]

    def training_step(self, batch, batch_idx):
        opt, sched = self.optimizers(), self.lr_schedulers()
        src = batch["source"]
        loss = segmentation_ce(self.segmenter(src["image"]), src["mask"])
        if not self.backward_step(opt, loss, "segmentation"):
            return
        sched.step()
        self.log("train/loss_seg", loss, prog_bar=True)
        self.log("train/lr", sched.get_last_lr()[0])
