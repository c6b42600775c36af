"""A small CPU-friendly segmentation network for the toy benchmark and tests.

Encoder: 3 stride-2 stages (width w, 2w, 4w) + a dilated context block at 1/8 resolution;
decoder: two skip fusions up to 1/2 resolution, a 1x1 classifier, bilinear upsampling.
Contract: forward(x: (B,3,H,W) float) -> logits (B,num_classes,H,W) for any H, W (padded
internally to a multiple of 8); forward(x, return_features=True) -> (logits, {"enc": (B,4w,~H/8,~W/8),
"dec": (B,w,~H/2,~W/2)}).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallSegNet(nn.Module):
    def __init__(self, num_classes: int = 19, width: int = 32, in_channels: int = 3):
        super().__init__()
        w = width
        self.num_classes = num_classes
        self.stage1 = nn.Sequential(conv_bn_relu(in_channels, w, 2), conv_bn_relu(w, w))
        self.stage2 = nn.Sequential(conv_bn_relu(w, 2 * w, 2), conv_bn_relu(2 * w, 2 * w))
        self.stage3 = nn.Sequential(conv_bn_relu(2 * w, 4 * w, 2), conv_bn_relu(4 * w, 4 * w))
        self.context = nn.Sequential(conv_bn_relu(4 * w, 4 * w, dilation=2),
                                     conv_bn_relu(4 * w, 4 * w, dilation=4))
        self.fuse2 = conv_bn_relu(4 * w + 2 * w, 2 * w)
        self.fuse1 = conv_bn_relu(2 * w + w, w)
        self.classifier = nn.Conv2d(w, num_classes, 1)

    def param_groups(self, lr: float) -> list[dict]:
        """One group: no pretrained backbone, so no 10x head learning rate."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def forward(self, x: torch.Tensor, return_features: bool = False):
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        f3 = self.context(self.stage3(f2))
        d2 = self.fuse2(torch.cat([F.interpolate(f3, size=f2.shape[-2:], mode="bilinear",
                                                 align_corners=False), f2], 1))
        d1 = self.fuse1(torch.cat([F.interpolate(d2, size=f1.shape[-2:], mode="bilinear",
                                                 align_corners=False), f1], 1))
        logits = F.interpolate(self.classifier(d1), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)[..., :h, :w]
        if return_features:
            return logits, {"enc": f3, "dec": d1}
        return logits
