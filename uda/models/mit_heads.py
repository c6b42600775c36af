"""Decode heads over the four Mix-Transformer stages (strides 4, 8, 16, 32): DAFormer's
context-aware feature fusion and SegFormer's all-MLP head. Both return logits at stride 4 (the
segmenter upsamples them to the input size).

``DAFormerHead`` (Hoyer et al., "DAFormer", CVPR 2022, Tab. 7 "context-aware fusion"; official
config ``daformer_sepaspp_mitb5.py``):

1. each stage i: a linear embedding (per pixel, with bias, no norm / activation) C_i -> D;
2. the stages 2-4 embeddings upsampled bilinearly (align_corners=False) to stage 1's size;
   the four concatenated (4D channels);
3. fusion: four parallel branches on the 4D channels, each giving D channels:
   dilation 1: 1x1 conv + BN + ReLU; dilations 6, 12, 18: depthwise-separable 3x3 conv
   (depthwise dilated 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU); no image pooling;
   their concatenation (4D) through a 3x3 conv + BN + ReLU -> D;
4. Dropout2d(0.1) and a 1x1 classifier D -> num_classes.

``SegFormerHead`` (Xie et al., "SegFormer", NeurIPS 2021): step 1 and 2 as above, then a 1x1
conv + BN + ReLU (4D -> D), Dropout2d(0.1), a 1x1 classifier.

Convolutions followed by BN have no bias; conv weights are Kaiming-normal (fan_out, ReLU), BN
weight 1 / bias 0, the DAFormer classifier N(0, 0.01) with bias 0 (mmseg's initialisation).
The module names are those of the heads in the DAFormer repository (mmseg: ``embed_layers.i.proj``,
``fuse_layer.aspp_modules.j...``, ``fuse_layer.bottleneck``, ``conv_seg``; ``linear_c.i.proj``,
``linear_fuse``, ``linear_pred``), so its checkpoints' ``decode_head.*`` tensors load by name.
Both heads concatenate the stages in the order 1..4, as DAFormer's code does; NVlabs' SegFormer
concatenates 4..1 (the same head up to the order of the fuse conv's input channels; its
checkpoints' head tensors, named ``linear_c4`` .. ``linear_c1``, are not loaded).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DILATIONS = (1, 6, 12, 18)
DROPOUT = 0.1


class ConvBNReLU(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + ReLU; ``padding = dilation * (kernel // 2)``."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2),
                              dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class SeparableConvBNReLU(nn.Module):
    """Depthwise dilated 3x3 (+ BN + ReLU) followed by a pointwise 1x1 (+ BN + ReLU)."""

    def __init__(self, cin: int, cout: int, dilation: int):
        super().__init__()
        self.depthwise_conv = ConvBNReLU(cin, cin, 3, dilation=dilation, groups=cin)
        self.pointwise_conv = ConvBNReLU(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class LinearEmbed(nn.Module):
    """A per-pixel linear map C -> D of a (B, C, h, w) map (stored as ``proj``, an nn.Linear, as
    in the official heads; computed as a 1x1 convolution)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = nn.Linear(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.proj.weight[:, :, None, None], self.proj.bias)


class SeparableASPP(nn.Module):
    """DAFormer's fusion: parallel branches at ``dilations`` (1 -> 1x1 conv, else depthwise-
    separable 3x3), concatenated, then a 3x3 bottleneck conv; all with BN + ReLU."""

    def __init__(self, cin: int, cout: int, dilations=DILATIONS):
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            ConvBNReLU(cin, cout, 1) if d == 1 else SeparableConvBNReLU(cin, cout, d)
            for d in dilations)
        self.bottleneck = ConvBNReLU(len(dilations) * cout, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.aspp_modules], 1))


def embed_and_resize(embeds: nn.ModuleDict, stages: list[torch.Tensor]) -> torch.Tensor:
    """Each stage through its embedding, resized to the first stage's size, concatenated."""
    size = stages[0].shape[-2:]
    out = []
    for i, x in enumerate(stages):
        e = embeds[str(i)](x)
        if e.shape[-2:] != size:
            e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
        out.append(e)
    return torch.cat(out, 1)


class DAFormerHead(nn.Module):
    """Context-aware feature fusion (module docstring). ``in_channels``: the four stage widths;
    ``dim``: the embedding and fusion width (256 in DAFormer)."""

    def __init__(self, in_channels: list[int], num_classes: int, dim: int = 256):
        super().__init__()
        self.embed_layers = nn.ModuleDict({str(i): LinearEmbed(c, dim)
                                           for i, c in enumerate(in_channels)})
        self.fuse_layer = SeparableASPP(len(in_channels) * dim, dim)
        self.dropout = nn.Dropout2d(DROPOUT)
        self.conv_seg = nn.Conv2d(dim, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        x = self.fuse_layer(embed_and_resize(self.embed_layers, stages))
        return self.conv_seg(self.dropout(x))


class SegFormerHead(nn.Module):
    """SegFormer's all-MLP head (module docstring); ``dim`` 256 for B0/B1, 768 for B2-B5 in
    the SegFormer paper."""

    def __init__(self, in_channels: list[int], num_classes: int, dim: int = 256):
        super().__init__()
        self.linear_c = nn.ModuleDict({str(i): LinearEmbed(c, dim)
                                       for i, c in enumerate(in_channels)})
        self.linear_fuse = ConvBNReLU(len(in_channels) * dim, dim, 1)
        self.dropout = nn.Dropout2d(DROPOUT)
        self.linear_pred = nn.Conv2d(dim, num_classes, 1)

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        x = self.linear_fuse(embed_and_resize(self.linear_c, stages))
        return self.linear_pred(self.dropout(x))


HEADS = {"daformer": DAFormerHead, "segformer": SegFormerHead}
