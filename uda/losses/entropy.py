"""Entropy-based quantities on segmentation outputs (ADVENT, Vu et al. CVPR 2019)."""
from __future__ import annotations

import math

import torch


def self_information(prob: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """Weighted self-information map -p * log(p) per class, (B,C,H,W) -> (B,C,H,W), >= 0.
    ADVENT's discriminator input: summing over C gives the entropy map."""
    return -prob * torch.log(prob.clamp_min(eps))


def entropy_map(prob: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Per-pixel entropy (B,H,W); divided by log(C) when `normalise` (values in [0, 1])."""
    ent = self_information(prob).sum(1)
    return ent / math.log(prob.shape[1]) if normalise else ent


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean normalised entropy of softmax(logits): ADVENT's direct entropy minimisation."""
    return entropy_map(torch.softmax(logits.float(), 1)).mean()
