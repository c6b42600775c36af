"""Entropy-based quantities on segmentation outputs (ADVENT, Vu et al. CVPR 2019).

All three follow ADVENT's official code (valeoai/ADVENT): logarithms of p + 1e-30 (no clamp),
normalised by log(C), so that values lie in [0, 1] whatever the number of classes. The base of
the logarithm cancels in the ratio: -p log2(p) / log2(C) = -p ln(p) / ln(C).
"""
from __future__ import annotations

import math

import torch

EPS = 1e-30  # ADVENT's: log(p + 1e-30) keeps p = 0 finite (0 * log(1e-30) = 0)


def self_information(prob: torch.Tensor) -> torch.Tensor:
    """ADVENT's weighted self-information map -p log(p) / log(C) per class, (B,C,H,W) ->
    (B,C,H,W), in [0, 1/e/log(C)]: the discriminator input of `d_input: entropy`. Summing over C
    gives the normalised entropy map (in [0, 1])."""
    return -prob * torch.log(prob + EPS) / math.log(prob.shape[1])


def entropy_map(prob: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Per-pixel entropy (B,H,W): divided by log(C) when `normalise` (values in [0, 1]), in
    nats otherwise."""
    ent = self_information(prob).sum(1)
    return ent if normalise else ent * math.log(prob.shape[1])


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean normalised entropy of softmax(logits) over all pixels: ADVENT's direct entropy
    minimisation loss (MinEnt), sum(-p log2 p) / (N H W log2 C)."""
    return entropy_map(torch.softmax(logits.float(), 1)).mean()
