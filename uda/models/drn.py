"""DRN-C-26: Dilated Residual Network, type C, 26 layers (Yu, Koltun, Funkhouser, "Dilated
Residual Networks", CVPR 2017), as the segmentation network of DRANet: the backbone at output
stride 8, a 1x1 classifier, bilinear upsampling to the input size.

Layout (8 levels; every conv 3x3 unless noted, BatchNorm + ReLU after each conv):

=====  ========  ======  ======  ========  =========================================
level  channels  blocks  stride  dilation  block
=====  ========  ======  ======  ========  =========================================
stem   16        -       1       1         7x7 conv (no max-pooling)
1      16        1       1       1         residual basic block
2      32        1       2       1         residual basic block (1x1 projection)
3      64        2       2       1         residual basic blocks
4      128       2       2       1         residual basic blocks       -> stride 8
5      256       2       1       2         residual basic blocks
6      512       2       1       4         residual basic blocks
7      512       1       1       2         two convs, no residual ("degridding")
8      512       1       1       1         two convs, no residual ("degridding")
=====  ========  ======  ======  ========  =========================================

Module names follow the authors' release (``conv1``, ``bn1``, ``layer1`` .. ``layer8``; blocks
with ``conv1/bn1/conv2/bn2/downsample``) under ``backbone.``, so their ImageNet file
(``drn_c_26-ddedf421.pth``) loads as it is (``fc.*`` ignored); see `uda.models.weight_formats`.

Upsampling of the stride-8 logits to the input size (``upsample``):
- ``bilinear``: `F.interpolate` (align_corners=False) to the input size, any H, W;
- ``deconv``: the official segmentation code's (fyu/drn ``DRNSeg``): a fixed depthwise
  transposed convolution (kernel 16, stride 8, padding 4) with the bilinear kernel, giving
  8 x the feature size, cropped to the input size. In the interior it equals ``bilinear`` (for H,
  W multiples of 8); at the 4-pixel border it fades towards 0 (zero padding), as the official
  outputs do. The kernel is rebuilt, not stored (state dicts are the same for both).

Contract (shared by every segmenter in `uda.models`):
- ``forward(x)``: ``x`` (B,3,H,W) float, ImageNet-normalised RGB -> logits (B,num_classes,H,W)
  float at input size, any H, W;
- ``forward(x, return_features=True)`` -> ``(logits, {"enc": (B,512,ceil(H/8),ceil(W/8))})``;
- ``param_groups(lr)``: backbone at ``lr``, classifier at ``10 * lr``; ``num_classes``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from uda.models.backbone import BackboneSegmenter
from uda.models.weight_formats import check_format, drn_format
from uda.models.weights import LoadReport, load_weights

UPSAMPLES = ("bilinear", "deconv")

# (out channels, blocks, stride, dilation, residual) per level 1..8
DRN_C_26_LEVELS = (
    (16, 1, 1, 1, True),
    (32, 1, 2, 1, True),
    (64, 2, 2, 1, True),
    (128, 2, 2, 1, True),
    (256, 2, 1, 2, True),
    (512, 2, 1, 4, True),
    (512, 1, 1, 2, False),
    (512, 1, 1, 1, False),
)


class BasicBlock(nn.Module):
    """Two 3x3 convs (the first with ``stride``), each followed by BatchNorm, ReLU at the end.
    With ``residual=True`` the input (projected by a strided 1x1 conv + BN when the shape
    changes) is added before the last ReLU. (B,cin,h,w) -> (B,cout,ceil(h/stride),ceil(w/stride)).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1,
                 residual: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = None
        if residual and (stride != 1 or cin != cout):
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class DRNC26Backbone(nn.Module):
    """The DRN-C-26 feature extractor (no pooling, no classifier).
    (B,3,H,W) -> (B,512,ceil(H/8),ceil(W/8))."""

    out_channels = 512

    def __init__(self, levels=DRN_C_26_LEVELS):
        super().__init__()
        c0 = levels[0][0]
        self.conv1 = nn.Conv2d(3, c0, 7, 1, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(c0)
        self.relu = nn.ReLU(inplace=True)
        cin = c0
        for i, (cout, blocks, stride, dilation, residual) in enumerate(levels, start=1):
            layer = [BasicBlock(cin, cout, stride, dilation, residual)]
            layer += [BasicBlock(cout, cout, 1, dilation, residual) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            cin = cout
        self.num_levels = len(levels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.num_levels + 1):
            x = getattr(self, f"layer{i}")(x)
        return x


def bilinear_kernel(size: int) -> torch.Tensor:
    """(size, size) bilinear interpolation kernel of a transposed convolution with stride
    ceil(size / 2) (Long et al., FCN): the outer product of 1 - |i / f - c|, f = ceil(size / 2),
    c = (2f - 1 - f mod 2) / (2f)."""
    f = math.ceil(size / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    t = 1 - (torch.arange(size, dtype=torch.float64) / f - c).abs()
    return torch.outer(t, t).float()


def deconv_upsample(logits: torch.Tensor, size) -> torch.Tensor:
    """fyu/drn DRNSeg's upsampling: depthwise transposed conv (kernel 16, stride 8, padding 4)
    with `bilinear_kernel(16)`, cropped to ``size``."""
    c = logits.shape[1]
    w = bilinear_kernel(16).to(logits).expand(c, 1, 16, 16)
    up = F.conv_transpose2d(logits, w, stride=8, padding=4, groups=c)
    return up[..., :size[0], :size[1]]


class DRNC26(BackboneSegmenter):
    """DRN-C-26 segmenter: `DRNC26Backbone` (output stride 8) + 1x1 conv classifier (512 ->
    num_classes, weights ~ N(0, sqrt(2/num_classes)), bias 0, as the authors' segmentation code)
    + bilinear upsampling to the input size.

    Args:
        num_classes: output channels (19 for Cityscapes).
        pretrained: path of a local state dict: the authors' ImageNet DRN-C-26 file
            (``fc.*`` ignored), a DRNSeg state dict (``base.N.*`` / ``seg.*``), or a state dict of
            this class (possibly inside a Lightning checkpoint); see `load_pretrained`.
        upsample: "bilinear" or "deconv" (the official DRNSeg upsampling; module docstring).
    """

    def __init__(self, num_classes: int = 19, pretrained: str | Path | None = None,
                 upsample: str = "bilinear"):
        super().__init__()
        if upsample not in UPSAMPLES:
            raise ValueError(f"upsample={upsample!r} is not one of {', '.join(UPSAMPLES)}")
        self.num_classes = num_classes
        self.upsample = upsample
        self.backbone = DRNC26Backbone()
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_classes, 1, bias=True)
        nn.init.normal_(self.classifier.weight, 0.0, (2.0 / num_classes) ** 0.5)
        nn.init.zeros_(self.classifier.bias)
        self.load_report: LoadReport | None = None
        if pretrained is not None:
            self.load_report = self.load_pretrained(pretrained)

    def load_pretrained(self, path: str | Path) -> LoadReport:
        """Load every matching tensor (mapped name and shape) from a local file (format detected
        and reported: `uda.models.weight_formats.drn_format`); ``fc.*`` and DRNSeg's fixed
        ``up.*`` deconvolution are ignored (a DRNSeg file with ``up`` and ``upsample='bilinear'``
        is loaded with a warning), a classifier of another shape is skipped. Returns a
        `LoadReport`; raises FileNotFoundError / ValueError naming the file when it is missing or
        nothing matches."""
        def check(fmt) -> None:
            check_format(fmt, path, upsample=self.upsample, input_convention="imagenet_rgb")

        return load_weights(self, path, drn_format, check)

    def heads(self) -> list[nn.Module]:
        """The newly initialised modules (10x learning rate)."""
        return [self.classifier]

    def forward(self, x: torch.Tensor, return_features: bool = False):
        enc = self.backbone(x)
        if self.upsample == "deconv":
            logits = deconv_upsample(self.classifier(enc), x.shape[-2:])
        else:
            logits = F.interpolate(self.classifier(enc), size=x.shape[-2:], mode="bilinear",
                                   align_corners=False)
        if return_features:
            return logits, {"enc": enc}
        return logits
