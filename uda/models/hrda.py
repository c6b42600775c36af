"""HRDA's multi-resolution segmenter (Hoyer et al. ECCV 2022; lhoyer/HRDA
mmseg/models/segmentors/hrda_encoder_decoder.py and decode_heads/hrda_head.py), as a wrapper of
any segmenter of `uda.models` (small, deeplabv2, drn_c26, mit, dinov2).

Training (`forward_train(x, g)`, x the training crop):
  context  the whole crop downscaled by `context_scale` (HRDA 0.5) through the network: low-
           resolution (LR) logits, upsampled bilinearly to the crop size;
  detail   a `detail_crop` window of the crop at full resolution (HRDA 512 x 512 of 1024 x 1024)
           at a random position (`detail_box`: HRDA's `get_crop_bbox`, offsets multiples of
           `divisible`) through the same network: high-resolution (HR) logits of the window;
  scale attention  a = sigmoid(head(context features)) per class, upsampled to the crop size and
           0 outside the detail window (`attention=False`: a fixed 0.5 inside it);
  fusion   fused = (1 - a) * LR + a * HR placed in the window (`fuse`): outside it, LR alone.
Inference (`forward(x)`, the segmenter interface: logits at input size): LR on the whole image,
HR over the whole image by a sliding window of `detail_crop` tiles (stride `slide_stride`, HRDA:
half the window; `slide_boxes`), overlapping logits averaged, fused with the unmasked attention.
So validation, `uda evaluate` / `predict` and the EMA teacher's pseudo-labels (HRDA's
`generate_pseudo_label`: the same inference) need nothing else.

Scale-attention head: not a second copy of the decode head (HRDA's attention is a DAFormer head of
width 256 on the context's multi-level features; our segmenters have no shared head interface), but
a small SegFormer-MLP-like head on the context's feature levels (`feature_levels`: MiT "stages",
ViT "levels", else the 4-D maps of the features dict): each level 1x1-convolved to `dim`
channels, upsampled to the finest level, summed, BatchNorm + ReLU, 1x1 conv to one channel per
class (HRDA's classwise attention). Fusion happens at the crop's pixel resolution (our segmenters
return logits at input size); HRDA fuses at the head's stride-4 grid and masks the attention on
the LR grid before upsampling it (so its attention leaks half a cell past the window; ours is 0
outside it exactly).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from uda.evaluation.inference import slide_windows

Box = tuple[int, int, int, int]  # y1, y2, x1, x2


def detail_box(height: int, width: int, crop: Sequence[int], divisible: int,
               g: torch.Generator) -> Box:
    """A random `crop` window (y1, y2, x1, x2) inside a height x width image, HRDA's
    `get_crop_bbox`: offset = randint(0, (margin + 1) // divisible) * divisible per axis (margin =
    image - window; randint's upper bound excluded, so an offset never exceeds the margin), at
    least one choice (HRDA fails when (margin + 1) < divisible); a window larger than the image
    is clipped to it."""
    ch, cw = min(crop[0], height), min(crop[1], width)
    offsets = []
    for margin in (height - ch, width - cw):
        choices = max((margin + 1) // divisible, 1)
        offsets.append(int(torch.randint(choices, (1,), generator=g, device=g.device)) * divisible)
    y1, x1 = offsets
    return y1, y1 + ch, x1, x1 + cw


def crop_box(t: torch.Tensor, box: Box) -> torch.Tensor:
    """The window `box` of the last two dimensions of `t` (images, labels, weights)."""
    y1, y2, x1, x2 = box
    return t[..., y1:y2, x1:x2]


def slide_boxes(height: int, width: int, crop: Sequence[int],
                stride: Sequence[int]) -> list[Box]:
    """HRDA's `extract_slide_feat` windows over a height x width image: origins every `stride`,
    the last window of each axis ending at the border, windows clipped to a smaller image (the
    mmseg slide grid, `uda.evaluation.inference.slide_windows`)."""
    return slide_windows(height, width, (min(crop[0], height), min(crop[1], width)),
                         tuple(stride))


def fuse(lr: torch.Tensor, hr: torch.Tensor, attention: torch.Tensor | float,
         box: Box | None = None) -> torch.Tensor:
    """(1 - a) * lr + a * hr. lr (B,C,H,W); attention a (B,C|1,H,W) or a number; hr (B,C,h,w) is
    placed at `box` (h, w its size) and a is 0 outside it; box None: hr covers the image."""
    if box is None:
        return (1 - attention) * lr + attention * hr
    y1, y2, x1, x2 = box
    h, w = lr.shape[-2:]
    inside = lr.new_zeros((1, 1, h, w))
    inside[..., y1:y2, x1:x2] = 1
    a = attention * inside
    placed = F.pad(hr, (x1, w - x2, y1, h - y2))
    return (1 - a) * lr + a * placed


def feature_levels(feats: dict) -> list[torch.Tensor]:
    """The feature maps of a segmenter's `return_features` dict the attention head reads: MiT's
    "stages", the ViT's "levels", else every 4-D tensor of the dict (small: "enc", "dec")."""
    for key in ("stages", "levels"):
        if key in feats:
            return list(feats[key])
    return [v for v in feats.values() if torch.is_tensor(v) and v.ndim == 4]


class ScaleAttention(nn.Module):
    """Per-class scale-attention logits from feature levels (see the module docstring), at the
    finest level's grid."""

    def __init__(self, channels: Sequence[int], num_classes: int, dim: int = 256):
        super().__init__()
        self.embed = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in channels)
        self.fuse = nn.Sequential(nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        size = max((f.shape[-2:] for f in levels), key=lambda s: s[0] * s[1])
        x = sum(F.interpolate(e(f), size=size, mode="bilinear", align_corners=False)
                for e, f in zip(self.embed, levels))
        return self.classifier(self.fuse(x))


@torch.no_grad()
def level_channels(net: nn.Module, size: int = 112) -> list[int]:
    """Channels of `net`'s feature levels, from one forward of a zero image in eval mode (the
    modes of all its layers restored after; 112 = a multiple of 14, 16 and 8)."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        p = next(net.parameters())
        _, feats = net(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype),
                       return_features=True)
    finally:
        for m, mode in modes:
            m.training = mode
    return [f.shape[1] for f in feature_levels(feats)]


class HRDASegmenter(nn.Module):
    """`net` (any segmenter of uda.models) at two resolutions with a learned scale attention.

    Args:
        net: the segmenter (its logits at input size, `return_features`, `param_groups`).
        num_classes: its output channels.
        context_scale: the context's downscaling factor (HRDA 0.5).
        detail_crop: the detail window [h, w] in pixels of the training crop (HRDA 512 x 512).
        divisible: the detail window's offsets are multiples of it (HRDA 8: the stride-4 head on
            the half-resolution context).
        slide_stride: [h, w] stride of the inference's detail windows (None: half the window,
            HRDA's overlapping slide).
        attention: learn the scale attention (False: a fixed 0.5 in the detail region).
        attention_dim: the attention head's width.
    """

    def __init__(self, net: nn.Module, num_classes: int, context_scale: float = 0.5,
                 detail_crop: Sequence[int] = (512, 512), divisible: int = 8,
                 slide_stride: Sequence[int] | None = None, attention: bool = True,
                 attention_dim: int = 256):
        super().__init__()
        if not 0 < context_scale < 1:
            raise ValueError(f"context_scale must be in (0, 1), got {context_scale}")
        self.net, self.num_classes = net, num_classes
        self.context_scale, self.divisible = context_scale, divisible
        self.detail_crop = tuple(detail_crop)
        self.slide_stride = tuple(slide_stride or (self.detail_crop[0] // 2,
                                                   self.detail_crop[1] // 2))
        self.attention = (ScaleAttention(level_channels(net), num_classes, attention_dim)
                          if attention else None)

    def context(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(LR logits at the downscaled size, the network's features of the downscaled x)."""
        small = F.interpolate(x, scale_factor=self.context_scale, mode="bilinear",
                              align_corners=False)
        return self.net(small, return_features=True)

    def attention_map(self, feats: dict, size: Sequence[int]) -> torch.Tensor | float:
        """sigmoid(scale attention) of the context features, upsampled to `size` (or 0.5)."""
        if self.attention is None:
            return 0.5
        logits = self.attention(feature_levels(feats))
        return torch.sigmoid(F.interpolate(logits, size=tuple(size), mode="bilinear",
                                           align_corners=False))

    def _up(self, logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def forward_train(self, x: torch.Tensor, g: torch.Generator) -> dict:
        """The training parts of the crops x: "fused", "lr" (upsampled to x's size) and "hr" (the
        detail window) logits, the window "box" (one for the batch, as HRDA) and the context
        "features" (the network's features dict)."""
        size = x.shape[-2:]
        lr, feats = self.context(x)
        lr = self._up(lr, size)
        box = detail_box(*size, self.detail_crop, self.divisible, g)
        hr = self.net(crop_box(x, box))
        fused = fuse(lr, hr, self.attention_map(feats, size), box)
        return {"fused": fused, "lr": lr, "hr": hr, "box": box, "features": feats}

    def detail_inference(self, x: torch.Tensor) -> torch.Tensor:
        """HR logits over the whole of x: sliding detail windows (all in one batch, as HRDA's
        batched slide), overlapping logits averaged."""
        b, _, h, w = x.shape
        boxes = slide_boxes(h, w, self.detail_crop, self.slide_stride)
        out = self.net(torch.cat([crop_box(x, box) for box in boxes]))
        total = out.new_zeros((b, out.shape[1], h, w))
        count = out.new_zeros((1, 1, h, w))
        for i, (y1, y2, x1, x2) in enumerate(boxes):
            total[..., y1:y2, x1:x2] += out[i * b:(i + 1) * b]
            count[..., y1:y2, x1:x2] += 1
        return total / count

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Inference: fused logits at x's size (and the context features)."""
        size = x.shape[-2:]
        lr, feats = self.context(x)
        fused = fuse(self._up(lr, size), self.detail_inference(x),
                     self.attention_map(feats, size))
        return (fused, feats) if return_features else fused

    def param_groups(self, lr: float) -> list[dict]:
        """The network's groups, and the attention head at the network's highest rate (its
        head's: 10x lr for pretrained backbones, HRDA's attention being part of the decode
        head)."""
        groups = self.net.param_groups(lr)
        if self.attention is not None:
            top = max(g["lr"] for g in groups)
            group = {"params": [p for p in self.attention.parameters() if p.requires_grad],
                     "lr": top}
            if all("name" in g for g in groups):
                group.update(name="scale_attention", lr_mult=top / lr)
            groups.append(group)
        return groups
