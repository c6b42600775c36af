"""DACS's strong photometric augmentation of the mixed images, as pure tensor functions.

DACS (vikolss/DACS, `strongTransform`) draws once per iteration whether to colour-jitter the
mixed images (probability 0.8, strength 0.25 for brightness, contrast, saturation and hue) and
whether to blur them (probability 0.5, one sigma ~ U(0.15, 1.15), a kernel of about a tenth of
the image size, odd: `blur_kernel_size`). Each image gets its own jitter factors. DAFormer uses the same transform
(strength 0.2, probability 0.2). Images are RGB in [0, 1] here; all randomness comes from
`generator`. Labels are untouched (photometric only).
"""
from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> list[float]:
    return (lo + (hi - lo) * torch.rand(n, generator=g, device=g.device)).tolist()


def colour_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """(B,3,H,W) in [0, 1] -> jittered, in [0, 1]: per image, brightness, contrast and saturation
    factors ~ U(max(0, 1 - s), 1 + s) and a hue shift ~ U(-s, s) of a turn (s <= 0.5), in
    that order (torchvision's adjust_* semantics)."""
    b, s = x.shape[0], strength
    factors = [_uniform(b, max(0.0, 1 - s), 1 + s, generator) for _ in range(3)]
    hues = _uniform(b, -min(s, 0.5), min(s, 0.5), generator)
    out = []
    for i in range(b):
        y = TF.adjust_brightness(x[i], factors[0][i])
        y = TF.adjust_contrast(y, factors[1][i])
        y = TF.adjust_saturation(y, factors[2][i])
        out.append(TF.adjust_hue(y.clamp(0, 1), hues[i]))
    return torch.stack(out).clamp(0, 1)


def blur_kernel_size(n: int) -> int:
    """DACS's kernel length for an image side of n pixels: ceil(n / 10), minus 1 when even."""
    k = math.ceil(0.1 * n)
    return k if k % 2 == 1 else k - 1


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B,C,H,W) blurred with one isotropic Gaussian of `sigma` (kernel: blur_kernel_size)."""
    h, w = x.shape[-2:]
    return TF.gaussian_blur(x, [blur_kernel_size(w), blur_kernel_size(h)], [sigma, sigma])


def strong_transform(x: torch.Tensor, generator: torch.Generator, jitter_p: float = 0.8,
                     strength: float = 0.25, blur_p: float = 0.5) -> torch.Tensor:
    """DACS's strong augmentation of a batch (B,3,H,W) in [0, 1]: one draw per batch decides the
    jitter (probability jitter_p) and the blur (probability blur_p)."""
    jitter, blur, sigma = torch.rand(3, generator=generator, device=generator.device).tolist()
    if jitter < jitter_p and strength > 0:
        x = colour_jitter(x, strength, generator)
    if blur < blur_p:
        x = gaussian_blur(x, 0.15 + sigma)  # sigma ~ U(0.15, 1.15)
    return x
