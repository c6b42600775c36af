"""Output-space adversarial adaptation (AdaptSegNet / ADVENT style).

Per iteration (two optimizers: segmenter, discriminator(s)):
  1. segmenter step: CE on labelled source + lambda_adv * (D(target output) judged "source"),
     D frozen (toggled off);
  2. discriminator step: D(source output) -> source (label 0), D(target output) -> target
     (label 1), on detached outputs computed in step 1 (no second forward).
The discriminator sees softmax maps ("softmax", AdaptSegNet) or ADVENT's normalised
self-information maps -p log(p) / log(C) ("entropy", `uda.losses.entropy.self_information`).
With `multi_level`, the segmenter's "aux_logits" get their own discriminator, an auxiliary CE
weight and adversarial weight.
D's loss is half the sum of its source and target terms and its labels are source 0, target 1,
as in the official code (AdaptSegNet, ADVENT): an official discriminator and ours compute the
same losses from the same weights. Checkpoints say so (`checkpoint["discriminator_labels"]`); one
written before (D read source as 1) is converted when resumed: the last convolution of each D
is negated (vanilla, hinge: D_new = -D_old) or mapped to 1 - D_old (lsgan), and the first
moments of its Adam state negated, so the run continues the same game.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from uda.losses.entropy import self_information
from uda.losses.gan import discriminator_loss, generator_loss
from uda.models.discriminators import OutputDiscriminator
from uda.modules.base import RecipeParts, SegmentationModule

log = logging.getLogger(__name__)
SOURCE_LABEL, TARGET_LABEL = 0, 1  # D's labels, as the official AdaptSegNet / ADVENT code
D_LABELS = "source 0, target 1"    # stored in checkpoints (absent: written with source 1)


class OutputSpaceAdversarial(SegmentationModule):
    optimizer_steps_per_iteration = 2

    def __init__(self, segmenter: nn.Module, class_names: Sequence[str],
                 d_lr: float = 1e-4, d_width: int = 64, d_input: str = "softmax",
                 gan_loss: str = "vanilla", lambda_adv: float = 1e-3,
                 multi_level: bool = False, lambda_aux_seg: float = 0.1,
                 lambda_aux_adv: float = 2e-4, **common):
        """`common`: SegmentationModule's arguments (max_steps, optim, eval options, ...)."""
        super().__init__(segmenter, class_names, **common)
        if d_input not in ("softmax", "entropy"):
            raise ValueError(f"d_input must be 'softmax' or 'entropy', got {d_input!r}")
        self.d_lr, self.d_input, self.gan_loss = d_lr, d_input, gan_loss
        self.lambda_adv, self.multi_level = lambda_adv, multi_level
        self.lambda_aux_seg, self.lambda_aux_adv = lambda_aux_seg, lambda_aux_adv
        c = len(self.class_names)
        self.discriminators = nn.ModuleDict({"main": OutputDiscriminator(c, d_width)})
        if multi_level:
            self.discriminators["aux"] = OutputDiscriminator(c, d_width)

    def configure_optimizers(self):
        seg, seg_sched = self.task_optimizer()
        dis = torch.optim.Adam(self.discriminators.parameters(), lr=self.d_lr, betas=(0.9, 0.99))
        return [seg, dis], [seg_sched, self.poly(dis)]

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
                # LfF weights the main output; both heads train on blended label pairs
                losses[f"seg_{level}"] = w_seg * self.source_loss(out_s[level], src,
                                                                  lff=level == "main")
                d_t = self.discriminators[level](self.d_input_map(out_t[level]))
                losses[f"adv_{level}"] = w_adv * generator_loss(d_t, self.gan_loss,
                                                                read_as=SOURCE_LABEL)
        ok, losses = self.task_step(opt_seg, losses, batch, "segmenter")
        self.untoggle_optimizer(opt_seg)
        if not ok:
            return

        # 2. discriminators: target outputs -> 1 ("real" in gan.py's terms), source outputs -> 0
        # (detached); halved as in AdaptSegNet / ADVENT (loss_D / 2 for each domain's term)
        self.toggle_optimizer(opt_d)
        d_loss = sum(0.5 * discriminator_loss(
            self.discriminators[level](self.d_input_map(out_t[level].detach())),
            self.discriminators[level](self.d_input_map(out_s[level].detach())), self.gan_loss)
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

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["discriminator_labels"] = D_LABELS

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if checkpoint.get("discriminator_labels") != D_LABELS:
            flip_discriminator_labels(self, checkpoint)


def flip_discriminator_labels(module: OutputSpaceAdversarial, checkpoint: dict) -> None:
    """Convert, in place, a checkpoint whose discriminators read source as 1 to the labels of
    this version (module docstring): each D's last convolution negated (lsgan: bias 1 - b) and
    the first moments of those tensors in the discriminators' Adam state negated."""
    state, names = checkpoint["state_dict"], [n for n, _ in module.discriminators.named_parameters()]
    flipped = []
    for level, d in module.discriminators.items():
        last = [n for n, m in d.named_modules() if isinstance(m, nn.Conv2d)][-1]
        for kind in ("weight", "bias"):
            key = f"{level}.{last}.{kind}"
            t = state[f"discriminators.{key}"]
            offset = 1.0 if (kind == "bias" and module.gan_loss == "lsgan") else 0.0
            state[f"discriminators.{key}"] = offset - t
            flipped.append(names.index(key))
    optimizers = checkpoint.get("optimizer_states") or []
    if len(optimizers) > 1:  # [segmenter, discriminators]
        for i in flipped:
            if "exp_avg" in optimizers[1]["state"].get(i, {}):
                optimizers[1]["state"][i]["exp_avg"] = -optimizers[1]["state"][i]["exp_avg"]
    checkpoint["discriminator_labels"] = D_LABELS
    log.warning("checkpoint written before the discriminators read source as 0 (the official "
                "AdaptSegNet / ADVENT labels): their last layers were converted to those labels")


def build(a, parts: RecipeParts) -> OutputSpaceAdversarial:
    """The recipe of a `method.adversarial` settings section."""
    return OutputSpaceAdversarial(
        parts.segmenter(), parts.class_names, d_lr=a.d_lr, d_width=a.d_width, d_input=a.d_input,
        gan_loss=a.gan_loss, lambda_adv=a.lambda_adv, multi_level=a.multi_level,
        lambda_aux_seg=a.lambda_aux_seg, lambda_aux_adv=a.lambda_aux_adv, **parts.common)
