"""Output-space domain discriminator (AdaptSegNet, Tsai et al. CVPR 2018; ADVENT).

`OutputDiscriminator(in_channels)`: five 4x4 stride-2 convolutions (width, 2w, 4w, 8w, 1) with
LeakyReLU(0.2), no normalisation: (B, C, H, W) softmax or self-information maps -> (B, 1, H/32,
W/32) logits (source = 0, target = 1 in the recipe, as the official code: an official state dict
loads as is and computes the same losses).
"""
from __future__ import annotations

from torch import nn


class OutputDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 19, width: int = 64):
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(chans[-1], 1, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
