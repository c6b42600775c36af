"""Segmentation losses as pure tensor functions."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def pixel_ce(logits: torch.Tensor, target: torch.Tensor,
             ignore_index: int = 255) -> torch.Tensor:
    """Per-pixel cross-entropy in float32, (B,H,W); 0 where target == ignore_index."""
    return F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")


def valid_mean(pixel: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """sum(pixel over the valid pixels of target) / their number (0 when there are none)."""
    valid = target != ignore_index
    return pixel[valid].sum() / valid.sum().clamp(min=1)


def segmentation_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                    pixel_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean cross-entropy over non-ignored pixels.

    logits (B,C,H,W), target (B,H,W) int64, pixel_weight (B,H,W) or None. With weights the result
    is sum(w * ce) / number of valid pixels (weights rescale, they do not renormalise). Returns 0
    (with a gradient path) when no pixel is valid.
    """
    ce = pixel_ce(logits, target, ignore_index)
    if pixel_weight is not None:
        ce = ce * pixel_weight
    return valid_mean(ce, target, ignore_index)
