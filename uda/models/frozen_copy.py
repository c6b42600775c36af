"""A frozen copy of a segmenter at its current weights (DAFormer's "ImageNet model": the network
at its pretrained initialisation, whose encoder features the feature distance compares with).

No gradients, always in eval mode (BatchNorm with its stored statistics, no dropout), whatever
the parent's mode; part of the parent's state_dict, so a resumed run compares with the same
weights (a randomly initialised network is not rebuilt identically).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class FrozenCopy(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = copy.deepcopy(net).requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "FrozenCopy":
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The copy's features on x (the segmenter's return_features dict: "enc", ...)."""
        return self.net(x, return_features=True)[1]
