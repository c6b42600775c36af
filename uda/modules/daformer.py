"""DAFormer (Hoyer et al. CVPR 2022, lhoyer/DAFormer mmseg/models/uda/dacs.py) as the
self_training recipe plus its training strategies (the network, MiT-B5 + the context-aware
fusion head, is the `model` section's; rare-class sampling is data.debias.rare_class; AdamW
with linear warmup then poly 1.0 is method.optim).

One training iteration (labelled source x_s, y_s; unlabelled target x_t):
  pseudo-label  the EMA teacher labels x_t (uda.modules.self_training); each target pixel weighs
                the confident fraction, 0 in the first `ignore_top` and last `ignore_bottom`
                rows of the crop (pseudo-label crop, uda.losses.pseudo_weight);
  mix           ClassMix of source classes onto x_t (pasted pixels weigh 1), then the strong
                augmentation of the mixed images (colour jitter, blur: datamodules.debias.photometric);
  task step     CE on the source + fd_lambda x the thing-class feature distance of the student's
                source encoder features to a frozen copy of the initial network
                (uda.losses.feature_distance) (`source_losses`) + `weight` x the weighted CE on
                the mixed images (`pseudo_ce`) + `target_losses` (none here; MIC adds its
                masked-image loss); HRDA overrides `source_losses`, `pseudo_ce` and
                `frozen_features` with its multi-resolution network;
  teacher       EMA update after the step (uda.models.ema_teacher).
All randomness (mixing, augmentation, masks) comes from one generator seeded by batch["seed"].
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from datamodules.debias.mixing import classmix
from uda.losses import segmentation_ce
from uda.losses.feature_distance import thing_feature_distance
from uda.losses.pseudo_label import pseudo_label
from uda.losses.pseudo_weight import pseudo_weight_map
from uda.methods import DAFormerConfig
from uda.models.frozen_copy import FrozenCopy
from uda.modules.base import RecipeParts
from uda.modules.self_training import SelfTraining


class DAFormer(SelfTraining):
    def __init__(self, segmenter: nn.Module, class_names: Sequence[str],
                 fd_lambda: float = 0.005, fd_classes: Sequence[int] = (),
                 fd_scale_min_ratio: float = 0.75, ignore_top: int = 0, ignore_bottom: int = 0,
                 **kwargs):
        """`kwargs`: SelfTraining's (threshold, ema, weight, per_image, strong_aug) and
        SegmentationModule's (max_steps, optim, eval options, ...) arguments."""
        super().__init__(segmenter, class_names, **kwargs)
        # the copy is taken now, before any step: the initial (pretrained) weights
        self.frozen = FrozenCopy(segmenter) if fd_lambda > 0 else None
        self.fd_lambda, self.fd_classes = fd_lambda, tuple(fd_classes)
        self.fd_scale_min_ratio = fd_scale_min_ratio
        self.ignore_top, self.ignore_bottom = ignore_top, ignore_bottom

    @torch.no_grad()
    def pseudo_labelled_target(self, batch) -> dict[str, torch.Tensor]:
        """The teacher's labels of the target images, their pixel weights (confidence, pseudo-
        label crop) and the per-image confident fraction."""
        x_t = batch["target"]["image"]
        labels, confidence = pseudo_label(self.teacher(x_t, self.segmenter), self.threshold,
                                          per_image=self.per_image)
        weight = pseudo_weight_map(confidence, tuple(x_t.shape[-2:]), self.ignore_top,
                                   self.ignore_bottom)
        return {"labels": labels, "weight": weight, "confidence": confidence}

    @torch.no_grad()
    def mix(self, batch, target: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
        """Source classes pasted onto the pseudo-labelled target, strongly augmented."""
        src = batch["source"]
        x, y, w = classmix(src["image"], src["mask"], batch["target"]["image"], target["labels"],
                           g, weight_tgt=target["weight"])
        return {"image": self.augment(x, g), "mask": y, "weight": w}

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen initial network's encoder features of x (what the student's are pulled
        towards)."""
        return self.frozen(x)["enc"]

    def feature_distance(self, src: dict, features: torch.Tensor) -> torch.Tensor:
        """fd_lambda x the thing-class distance of the student's encoder features (of the
        source images) to the frozen initial network's."""
        return self.fd_lambda * thing_feature_distance(
            features, self.frozen_features(src["image"]), src["mask"], self.fd_classes,
            self.fd_scale_min_ratio, len(self.class_names))

    def source_losses(self, src: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
        """"seg": the CE on the source images (`source_loss`), "fd": the feature distance."""
        logits, features = self.segmenter(src["image"], return_features=True)
        losses = {"seg": self.source_loss(logits, src)}
        if self.frozen is not None:
            losses["fd"] = self.feature_distance(src, features["enc"])
        return losses

    def pseudo_ce(self, x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                  g: torch.Generator) -> torch.Tensor:
        """The student's pixel-weighted CE on images with (pseudo-)labels: the mixed images,
        MIC's masked ones."""
        return segmentation_ce(self.segmenter(x), labels, pixel_weight=weight)

    def target_losses(self, batch, target: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
        """Further weighted losses on the target images given their pseudo-labels (none)."""
        return {}

    def training_step(self, batch, batch_idx):
        opt, sched = self.optimizers(), self.lr_schedulers()
        g = self.generator(batch)
        target = self.pseudo_labelled_target(batch)
        mixed = self.mix(batch, target, g)
        losses = self.source_losses(batch["source"], g)
        losses["mixed"] = self.weight * self.pseudo_ce(mixed["image"], mixed["mask"],
                                                       mixed["weight"], g)
        losses.update(self.target_losses(batch, target, g))
        stepped, losses = self.task_step(opt, losses, batch)  # + the data.debias terms
        self.teacher.update(self.segmenter, self.iteration)  # also after a skipped step
        if not stepped:
            return
        sched.step()
        self.log("train/loss_seg", losses.pop("seg").detach(), prog_bar=True)
        self.log_dict({f"train/loss_{k}": v.detach() for k, v in losses.items()})
        self.log("train/pseudo_confident", target["confidence"].mean())
        self.log("train/lr", sched.get_last_lr()[0])


def recipe_kwargs(s: DAFormerConfig) -> dict:
    """DAFormer's constructor arguments from a daformer (or mic) settings section."""
    return dict(threshold=s.threshold, ema=s.ema, weight=s.weight,
                per_image=s.pseudo_weight == "image", fd_lambda=s.fd_lambda,
                fd_classes=tuple(s.fd_classes), fd_scale_min_ratio=s.fd_scale_min_ratio,
                ignore_top=s.pseudo_ignore_top, ignore_bottom=s.pseudo_ignore_bottom,
                strong_aug=(dict(jitter_p=s.jitter_p, strength=s.jitter_strength, blur_p=s.blur_p)
                            if s.strong_aug else None))


def build(s: DAFormerConfig, parts: RecipeParts) -> DAFormer:
    """The recipe of a `method.daformer` settings section."""
    return DAFormer(parts.segmenter(), parts.class_names, **recipe_kwargs(s), **parts.common)
