"""HRDA (Hoyer et al. ECCV 2022, lhoyer/HRDA): the daformer recipe on a multi-resolution network
(`uda.models.hrda.HRDASegmenter` around the `model` section's segmenter: a downscaled context of
the whole crop, a full-resolution detail window, a learned scale attention fusing them).

What changes from daformer (uda.modules.daformer), as the official dacs.py with an
HRDAEncoderDecoder:
  source / mixed losses  each forward draws its own detail window (from the iteration's
                generator); loss = (1 - lambda_lr - lambda_hr) x CE(fused) + lambda_lr x
                CE(context) + lambda_hr x CE(detail window, labels and pixel weights cropped to
                it) (`uda.losses.multires`; HRDA: lambda_lr 0, lambda_hr 0.1);
  pseudo-labels the EMA teacher's full inference (context on the whole target crop + sliding
                detail windows, fused), HRDA's `generate_pseudo_label`;
  feature distance  on the context's encoder features, the frozen copy's context features of
                the same downscaled images (HRDA's feature_scale 0.5).
Everything else (ClassMix, strong augmentation, pseudo-label crop, EMA, AdamW + warmup, rare-class
sampling) is daformer's.
"""
from __future__ import annotations

from typing import Sequence

import torch

from uda.losses import segmentation_ce
from uda.losses.multires import multires_loss
from uda.methods import HRDAConfig
from uda.models.hrda import HRDASegmenter, crop_box
from uda.modules.base import RecipeParts
from uda.modules.daformer import DAFormer, recipe_kwargs


def cropped_source(src: dict, box) -> dict:
    """The source batch's labels (and blended second labels) cropped to the detail window."""
    return {**src, **{k: crop_box(src[k], box) for k in ("mask", "mask_b") if k in src}}


class HRDA(DAFormer):
    def __init__(self, segmenter: HRDASegmenter, class_names: Sequence[str],
                 lambda_lr: float = 0.0, lambda_hr: float = 0.1, **kwargs):
        """`kwargs`: DAFormer's arguments."""
        super().__init__(segmenter, class_names, **kwargs)
        self.lambda_lr, self.lambda_hr = lambda_lr, lambda_hr

    def source_losses(self, src: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
        """"seg": the multi-resolution source CE (LfF weights, when on, on the fused term only),
        "fd": the feature distance of the context's encoder features."""
        out = self.segmenter.forward_train(src["image"], g)
        lr = self.source_loss(out["lr"], src, lff=False) if self.lambda_lr > 0 else None
        hr = (self.source_loss(out["hr"], cropped_source(src, out["box"]), lff=False)
              if self.lambda_hr > 0 else None)
        losses = {"seg": multires_loss(self.source_loss(out["fused"], src), lr, hr,
                                       self.lambda_lr, self.lambda_hr)}
        if self.frozen is not None:
            losses["fd"] = self.feature_distance(src, out["features"]["enc"])
        return losses

    def pseudo_ce(self, x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                  g: torch.Generator) -> torch.Tensor:
        """The multi-resolution pixel-weighted CE (labels and weights cropped for the detail
        window)."""
        out = self.segmenter.forward_train(x, g)
        lr = (segmentation_ce(out["lr"], labels, pixel_weight=weight) if self.lambda_lr > 0
              else None)
        hr = (segmentation_ce(out["hr"], crop_box(labels, out["box"]),
                              pixel_weight=crop_box(weight, out["box"]))
              if self.lambda_hr > 0 else None)
        return multires_loss(segmentation_ce(out["fused"], labels, pixel_weight=weight), lr, hr,
                             self.lambda_lr, self.lambda_hr)

    @torch.no_grad()
    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen.net.context(x)[1]["enc"]


def hrda_segmenter(s: HRDAConfig, parts: RecipeParts) -> HRDASegmenter:
    """The `model` section's segmenter in HRDA's multi-resolution wrapper."""
    return HRDASegmenter(parts.segmenter(), len(parts.class_names),
                         context_scale=s.context_scale, detail_crop=s.detail_crop,
                         divisible=s.crop_divisible, slide_stride=s.slide_stride,
                         attention=s.attention, attention_dim=s.attention_dim)


def build(s: HRDAConfig, parts: RecipeParts) -> HRDA:
    """The recipe of a `method.hrda` settings section."""
    return HRDA(hrda_segmenter(s, parts), parts.class_names, lambda_lr=s.lambda_lr,
                lambda_hr=s.lambda_hr, **recipe_kwargs(s), **parts.common)
