"""A multi-level dense-prediction head for plain (single-stride) ViT backbones.

Input: four feature maps (B, D, h, w) on the patch grid (stride p; 14 px for DINOv2), the tokens
of four blocks from shallow to deep. Output: logits (B, num_classes, 4h, 4w) at stride p/4.

Two parts, each following a published design:

1. `SimpleFeaturePyramid`: the four levels are resampled to strides p/4, p/2, p, 2p with the
   operations of ViTDet's simple feature pyramid (Li et al., "Exploring Plain Vision Transformer
   Backbones for Object Detection", ECCV 2022, Fig. 2c: two 2x2 stride-2 transposed convolutions
   with LayerNorm + GELU between, halving the channels each time; one; identity; 2x2 max-pool).
   As in DPT's "reassemble" step (Ranftl et al., "Vision Transformers for Dense Prediction",
   ICCV 2021), each scale takes a different block: the shallowest the finest scale. Channels:
   D/4, D/2, D, D.
2. `PyramidHead`: the top-down decoder of VFM-UDA++ (Englert & Dubbelman, 2025;
   tue-mps/vfm-uda-plusplus, models/multiscale_vfm/basic_pyramid_head.py `_Upscale`): from the
   coarsest map, each step is a 2x2 stride-2 transposed convolution halving the channels, plus a
   1x1 lateral projection of the next finer map, summed, then a 3x3 convolution, BatchNorm and
   ReLU; a last 3x3 convolution and a 1x1 classifier (no bias, weights N(0, 0.1), as theirs) on
   D/8 channels at stride p/4. Their head reads a ViT-Adapter's four maps (all D channels); here
   the laterals take the pyramid's channels above. Their BatchNorm momentum is 0.01 (SyncBN);
   PyTorch's default 0.1 is kept here (short toy runs evaluate with the running statistics).

Parameters: 1.61M for D=384 (ViT-S, 19 classes), 6.42M for D=768, 11.41M for D=1024.
"""
from __future__ import annotations

import torch
from torch import nn
from timm.layers import LayerNorm2d


def _fit(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`t` cropped to the spatial size of `ref` (a 2x upsampling of a ceil-mode pooled map of
    odd size is one row / column larger)."""
    return t[..., :ref.shape[-2], :ref.shape[-1]]


class SimpleFeaturePyramid(nn.Module):
    """Four (B, D, h, w) maps -> [(B, D/4, 4h, 4w), (B, D/2, 2h, 2w), (B, D, h, w),
    (B, D, ceil(h/2), ceil(w/2))] (ViTDet's operations, one block per scale)."""

    def __init__(self, dim: int):
        super().__init__()
        self.up4 = nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
                                 LayerNorm2d(dim // 2), nn.GELU(),
                                 nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2))
        self.up2 = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
        self.down2 = nn.MaxPool2d(2, ceil_mode=True)
        self.channels = (dim // 4, dim // 2, dim, dim)

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        l1, l2, l3, l4 = levels
        return [self.up4(l1), self.up2(l2), l3, self.down2(l4)]


class _TopDownStep(nn.Module):
    """smooth(up(coarse) + lateral(fine)), BatchNorm, ReLU: `cout` channels at fine's size."""

    def __init__(self, coarse: int, fine: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(coarse, cout, 2, stride=2)
        self.lateral = nn.Conv2d(fine, cout, 1)
        self.smooth = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        x = _fit(self.up(coarse), fine) + self.lateral(fine)
        return self.act(self.norm(self.smooth(x)))


class PyramidHead(nn.Module):
    """`SimpleFeaturePyramid` + the VFM-UDA++ top-down decoder (module docstring).
    forward(levels: 4 maps (B, dim, h, w), shallow to deep) -> logits (B, num_classes, 4h, 4w)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        if dim % 8:
            raise ValueError(f"the pyramid head halves the width {dim} three times: it must be a "
                             "multiple of 8")
        self.pyramid = SimpleFeaturePyramid(dim)
        c1, c2, c3, c4 = self.pyramid.channels
        self.step1 = _TopDownStep(c4, c3, dim // 2)       # stride 2p -> p
        self.step2 = _TopDownStep(dim // 2, c2, dim // 4)  # p -> p/2
        self.step3 = _TopDownStep(dim // 4, c1, dim // 8)  # p/2 -> p/4
        self.smooth = nn.Conv2d(dim // 8, dim // 8, 3, padding=1)
        self.classifier = nn.Conv2d(dim // 8, num_classes, 1, bias=False)
        self.apply(_init)
        nn.init.normal_(self.classifier.weight, 0.0, 0.1)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3, f4 = self.pyramid(levels)
        x = self.step3(self.step2(self.step1(f4, f3), f2), f1)
        return self.classifier(self.smooth(x))


def _init(m: nn.Module) -> None:
    """VFM-UDA++'s initialisation: Kaiming-uniform convolutions (fan_in; fan_out for transposed
    ones), zero biases, unit norms."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        mode = "fan_out" if isinstance(m, nn.ConvTranspose2d) else "fan_in"
        nn.init.kaiming_uniform_(m.weight, mode=mode, nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
