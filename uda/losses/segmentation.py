"""Segmentation losses as pure tensor functions."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def segmentation_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                    pixel_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean cross-entropy over non-ignored pixels.

    logits (B,C,H,W), target (B,H,W) int64, pixel_weight (B,H,W) or None. With weights the result
    is sum(w * ce) / number of valid pixels (weights rescale, they do not renormalise). Returns 0
    (with a gradient path) when no pixel is valid.
    """
    ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    valid = target != ignore_index
    if pixel_weight is not None:
        ce = ce * pixel_weight
    return ce[valid].sum() / valid.sum().clamp(min=1)
