"""The input convention a segmenter's weights expect, applied inside the segmenter.

The data pipeline normalises every image with its own (mean, std) (`data.*_transform`, ImageNet's
by default) and the rest of the project (panels, translation, mixing) works on those tensors. A
segmenter whose weights come from elsewhere converts them at its input:

- ``imagenet_rgb``: the tensor as the data pipeline gives it (torchvision and DRN ImageNet weights
  use ImageNet RGB normalisation; the default data normalisation);
- ``caffe_bgr``: the Caffe DeepLab-v2 convention of AdaptSegNet / ADVENT / DACS and their
  initialisations: BGR channel order, pixel values in [0, 255] minus `CAFFE_MEAN_BGR`, no std.

The conversion is one per-channel affine map (plus the channel flip), exact up to float rounding.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

INPUT_CONVENTIONS = ("imagenet_rgb", "caffe_bgr")
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)  # AdaptSegNet/ADVENT IMG_MEAN
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputConvention(nn.Module):
    """(B,3,H,W) images normalised with the data's ``mean``/``std`` (RGB, values in [0, 1] before
    normalisation) -> the tensor the weights expect under ``convention``. ``imagenet_rgb`` returns
    the input itself (the data normalisation is the one the weights were trained with, as the
    config says). No persistent state: state dicts are unchanged."""

    def __init__(self, convention: str = "imagenet_rgb",
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        if convention not in INPUT_CONVENTIONS:
            raise ValueError(f"input_convention={convention!r} is not one of "
                             f"{', '.join(INPUT_CONVENTIONS)}")
        self.convention = convention
        mean_t = torch.tensor(mean, dtype=torch.float32)
        std_t = torch.tensor(std, dtype=torch.float32)
        # caffe_bgr: out[c] = 255 * (x[2 - c] * std[2 - c] + mean[2 - c]) - CAFFE_MEAN_BGR[c]
        scale = (255.0 * std_t).flip(0)
        shift = (255.0 * mean_t).flip(0) - torch.tensor(CAFFE_MEAN_BGR, dtype=torch.float32)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.convention == "imagenet_rgb":
            return x
        return x.flip(1) * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    def extra_repr(self) -> str:
        return self.convention
