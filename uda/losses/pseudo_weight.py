"""Per-pixel pseudo-label weights with DAFormer's pseudo-label crop.

DAFormer (lhoyer/DAFormer mmseg/models/uda/dacs.py, `pseudo_weight_ignore_top/bottom`) does
not trust the teacher's labels in the top and bottom rows of a target crop (rectification
artefacts at the top, the ego-vehicle's bonnet at the bottom of Cityscapes frames): their
weight is 0 there. Pasted source pixels keep weight 1 (the mixing does that).
"""
from __future__ import annotations

import torch


def pseudo_weight_map(confidence: torch.Tensor, size: tuple[int, int], ignore_top: int = 0,
                      ignore_bottom: int = 0) -> torch.Tensor:
    """(B,H,W) float: each image's confidence weight (B,) (`uda.losses.pseudo_label`) at every
    pixel, 0 in its first `ignore_top` and last `ignore_bottom` rows."""
    if ignore_top < 0 or ignore_bottom < 0:
        raise ValueError(f"ignored rows must be >= 0, got top={ignore_top}, bottom={ignore_bottom}")
    h, w = size
    weight = confidence.float().view(-1, 1, 1).expand(-1, h, w).clone()
    weight[:, :ignore_top] = 0
    if ignore_bottom > 0:
        weight[:, h - min(ignore_bottom, h):] = 0
    return weight
