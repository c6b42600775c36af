"""Output-space adversarial adaptation (AdaptSegNet / ADVENT style).

Per iteration (two optimizers: segmenter, discriminator(s)):
  1. segmenter step: CE on labelled source + lambda_adv * (D(target output) judged "source"),
     D frozen (toggled off);
  2. discriminator step: D(source output) -> source, D(target output) -> target, on detached
     outputs computed in step 1 (no second forward).
The discriminator sees softmax maps ("softmax", AdaptSegNet) or self-information maps
("entropy", ADVENT). With `multi_level`, the segmenter's "aux_logits" get their own
discriminator, an auxiliary CE weight and adversarial weight.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from uda.losses import segmentation_ce
from uda.losses.entropy import self_information
from uda.losses.gan import discriminator_loss, generator_loss
from uda.models.discriminators import OutputDiscriminator
from uda.modules.base import SegmentationModule, build_optimizer, poly_lambda


class OutputSpaceAdversarial(SegmentationModule):
    optimizer_steps_per_iteration = 2

    def __init__(self, segmenter: nn.Module, class_names: Sequence[str], max_steps: int,
                 optim: str = "sgd", lr: float = 2.5e-4, momentum: float = 0.9,
                 weight_decay: float = 5e-4, poly_power: float = 0.9,
                 d_lr: float = 1e-4, d_width: int = 64, d_input: str = "softmax",
                 gan_loss: str = "vanilla", lambda_adv: float = 1e-3,
                 multi_level: bool = False, lambda_aux_seg: float = 0.1,
                 lambda_aux_adv: float = 2e-4,
                 class_subsets: Mapping[str, Sequence[int]] | None = None,
                 eval_options: Mapping[str, Any] | None = None, channels_last: bool = False,
                 image_mean: Sequence[float] = (0.485, 0.456, 0.406),
                 image_std: Sequence[float] = (0.229, 0.224, 0.225)):
        super().__init__(segmenter, class_names, class_subsets, eval_options, channels_last,
                         image_mean, image_std)
        if d_input not in ("softmax", "entropy"):
            raise ValueError(f"d_input must be 'softmax' or 'entropy', got {d_input!r}")
        self.automatic_optimization = False
        self.max_steps, self.poly_power = max_steps, poly_power
        self.optim_args = dict(name=optim, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.d_lr, self.d_input, self.gan_loss = d_lr, d_input, gan_loss
        self.lambda_adv, self.multi_level = lambda_adv, multi_level
        self.lambda_aux_seg, self.lambda_aux_adv = lambda_aux_seg, lambda_aux_adv
        c = len(self.class_names)
        self.discriminators = nn.ModuleDict({"main": OutputDiscriminator(c, d_width)})
        if multi_level:
            self.discriminators["aux"] = OutputDiscriminator(c, d_width)

    def configure_optimizers(self):
        seg = build_optimizer(self.segmenter.param_groups(self.optim_args["lr"]), **self.optim_args)
        dis = torch.optim.Adam(self.discriminators.parameters(), lr=self.d_lr, betas=(0.9, 0.99))
        poly = poly_lambda(self.max_steps, self.poly_power)
        return [seg, dis], [LambdaLR(seg, poly), LambdaLR(dis, poly)]

    def d_input_map(self, logits: torch.Tensor) -> torch.Tensor:
        prob = torch.softmax(logits.float(), 1)
        return self_information(prob) if self.d_input == "entropy" else prob

    def outputs(self, images) -> dict[str, torch.Tensor]:
        """{"main": logits[, "aux": aux logits]} at input size."""
        logits, feats = self.segmenter(images, return_features=True)
        out = {"main": logits}
        if self.multi_level:
            out["aux"] = feats["aux_logits"]
        return out

    def training_step(self, batch, batch_idx):
        opt_seg, opt_d = self.optimizers()
        sched_seg, sched_d = self.lr_schedulers()
        src, tgt = batch["source"], batch["target"]
        weights = {"main": (1.0, self.lambda_adv), "aux": (self.lambda_aux_seg, self.lambda_aux_adv)}

        # 1. segmenter: supervised on source, fool D on target (D frozen)
        self.toggle_optimizer(opt_seg)
        out_s, out_t = self.outputs(src["image"]), self.outputs(tgt["image"])
        losses = {}
        for level, (w_seg, w_adv) in weights.items():
            if level in out_s:
                losses[f"seg_{level}"] = w_seg * segmentation_ce(out_s[level], src["mask"])
                d_t = self.discriminators[level](self.d_input_map(out_t[level]))
                losses[f"adv_{level}"] = w_adv * generator_loss(d_t, self.gan_loss)
        ok = self.backward_step(opt_seg, sum(losses.values()), "segmenter")
        self.untoggle_optimizer(opt_seg)
        if not ok:
            return

        # 2. discriminators: source outputs -> "real", target outputs -> "fake" (detached)
        self.toggle_optimizer(opt_d)
        d_loss = sum(discriminator_loss(
            self.discriminators[level](self.d_input_map(out_s[level].detach())),
            self.discriminators[level](self.d_input_map(out_t[level].detach())), self.gan_loss)
            for level in out_s)
        ok = self.backward_step(opt_d, d_loss, "discriminator")
        self.untoggle_optimizer(opt_d)
        if not ok:
            return

        sched_seg.step()
        sched_d.step()
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=False)
        self.log("train/loss_d", d_loss)
        self.log("train/loss_seg", losses["seg_main"], prog_bar=True)
