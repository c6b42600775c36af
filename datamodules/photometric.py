"""DACS / DAFormer's strong photometric augmentation of a batch on its device, seeded by a
`torch.Generator` (pure functions; inputs are never modified).

Images are RGB in [0, 1] (B,3,H,W). Following the official `strong_transform`
(lhoyer/DAFormer mmseg/models/utils/dacs_transforms.py): whether the batch is jittered and
whether it is blurred are decided once per batch (jitter when a uniform draw exceeds
1 - jitter_p, blur with probability 1/2), the factors per image:
- colour jitter of strength s: brightness, contrast and saturation factors uniform in
  [max(0, 1 - s), 1 + s], hue shift uniform in [-s, s] of a full turn, applied in a random
  order; with torchvision's (PIL's) definitions of the four operations. The official code used
  kornia 0.5's ColorJitter, whose brightness is additive (x + f - 1) and contrast a plain scale
  (x * f): close, not identical;
- Gaussian blur with sigma uniform in [0.15, 1.15] px and a kernel of the largest odd size
  <= ceil(0.1 x the side) per axis (the official rule), reflect padding.
"""
from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF

SIGMA_RANGE = (0.15, 1.15)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator,
                                                 device=generator.device))


def blur_kernel_size(side: int) -> int:
    """The official blur kernel size: the largest odd integer <= ceil(0.1 * side)."""
    k = math.ceil(0.1 * side)
    return max(1, k if k % 2 else k - 1)


def colour_jitter_image(x: torch.Tensor, strength: float, generator: torch.Generator
                        ) -> torch.Tensor:
    """One image (3,H,W) in [0, 1], jittered (see the module docstring)."""
    s = strength
    ops = [lambda y, f: TF.adjust_brightness(y, f), lambda y, f: TF.adjust_contrast(y, f),
           lambda y, f: TF.adjust_saturation(y, f), lambda y, f: TF.adjust_hue(y, f)]
    factors = [_uniform(generator, max(0.0, 1 - s), 1 + s) for _ in range(3)]
    factors.append(_uniform(generator, -min(s, 0.5), min(s, 0.5)))
    order = torch.randperm(4, generator=generator, device=generator.device).tolist()
    for i in order:
        x = ops[i](x, factors[i])
    return x


def strong_augment(x: torch.Tensor, generator: torch.Generator, jitter: float = 0.2,
                   jitter_p: float = 0.8, blur: bool = True) -> torch.Tensor:
    """The batch x (B,3,H,W) in [0, 1], colour-jittered (strength `jitter`, with probability
    `jitter_p`) and blurred (with probability 1/2 when `blur`), as DAFormer augments its mixed
    images (jitter 0.2; its color_jitter_probability=0.2 is the threshold a uniform draw must
    exceed: jitter_p = 0.8)."""
    do_jitter = _uniform(generator, 0.0, 1.0) > 1 - jitter_p and jitter > 0
    do_blur = blur and _uniform(generator, 0.0, 1.0) > 0.5
    if not (do_jitter or do_blur):
        return x
    kernel = [blur_kernel_size(x.shape[-1]), blur_kernel_size(x.shape[-2])]  # (x, y)
    out = []
    for img in x.float():
        if do_jitter:
            img = colour_jitter_image(img, jitter, generator)
        if do_blur:
            sigma = _uniform(generator, *SIGMA_RANGE)
            img = TF.gaussian_blur(img, kernel, [sigma, sigma])
        out.append(img)
    return torch.stack(out).to(x.dtype)
