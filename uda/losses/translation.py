"""Image-translation losses (DRANet) as pure tensor functions.

Feature maps are (B, C, H, W); Gram matrices (B, C, C). Every loss returns a float32 scalar
averaged over all elements (batch included), so weights do not depend on batch or image size.
"""
from __future__ import annotations

from typing import Mapping, Sequence, Union

import torch
import torch.nn.functional as F

Grams = Union[Mapping[str, torch.Tensor], Sequence[torch.Tensor]]


def reconstruction_loss(x: torch.Tensor, y: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute ("l1") or squared ("l2") difference of two same-shape tensors."""
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    if kind == "l1":
        return F.l1_loss(x.float(), y.float())
    if kind == "l2":
        return F.mse_loss(x.float(), y.float())
    raise ValueError(f"unknown reconstruction kind {kind!r}; expected 'l1' or 'l2'")


def gram_matrix(feat: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C), G[b, i, j] = sum_p f[b, i, p] f[b, j, p] / (C * H * W).

    Dividing by H * W makes it a mean over pixels, so crops and full frames give comparable
    values; the extra 1/C keeps the scale of style losses similar across layers of different
    width. Computed in float32, autocast off (a 16-mixed run would otherwise multiply in float16,
    whose sums over a frame's pixels overflow).
    """
    b, c, h, w = feat.shape
    with torch.autocast(feat.device.type, enabled=False):
        f = feat.float().reshape(b, c, h * w)
        return f @ f.transpose(1, 2) / (c * h * w)


def instance_normalize(feat: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per image and channel: subtract the spatial mean, divide by the spatial std."""
    feat = feat.float()
    mean = feat.mean(dim=(2, 3), keepdim=True)
    std = (feat.var(dim=(2, 3), keepdim=True, unbiased=False) + eps).sqrt()
    return (feat - mean) / std


def content_loss(feat_a: torch.Tensor, feat_b: torch.Tensor,
                 normalize: bool = False) -> torch.Tensor:
    """Mean squared difference of two same-shape feature maps. With `normalize`, both are
    instance-normalised first: per-channel statistics (what a style is made of) no longer count,
    so the loss keeps the layout without opposing the style change a translation must make."""
    if feat_a.shape != feat_b.shape:
        raise ValueError(f"shape mismatch: {tuple(feat_a.shape)} vs {tuple(feat_b.shape)}")
    if normalize:
        feat_a, feat_b = instance_normalize(feat_a), instance_normalize(feat_b)
    return F.mse_loss(feat_a.float(), feat_b.float())


def style_loss(grams_a: Grams, grams_b: Grams) -> torch.Tensor:
    """Sum over layers of the mean squared difference between Gram matrices.

    Both dicts with the same keys ({layer: (B, C, C)}) or both sequences of the same length;
    grams_b may be CADT-mixed target Grams (one per source image).
    """
    if isinstance(grams_a, Mapping) != isinstance(grams_b, Mapping):
        raise ValueError("grams_a and grams_b must both be dicts or both be sequences")
    if isinstance(grams_a, Mapping):
        if set(grams_a) != set(grams_b):
            raise ValueError(f"layer mismatch: {sorted(grams_a)} vs {sorted(grams_b)}")
        pairs = [(grams_a[k], grams_b[k]) for k in grams_a]
    else:
        if len(grams_a) != len(grams_b):
            raise ValueError(f"layer count mismatch: {len(grams_a)} vs {len(grams_b)}")
        pairs = list(zip(grams_a, grams_b))
    if not pairs:
        raise ValueError("style_loss needs at least one layer")
    return sum(content_loss(a, b) for a, b in pairs)


def consistency_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference (e.g. features of a translated image vs the original's)."""
    return reconstruction_loss(a, b, kind="l1")


def layout_colour_loss(m: torch.Tensor, b: torch.Tensor, mean_from: torch.Tensor,
                       mean_to: torch.Tensor) -> torch.Tensor:
    """How far each image's global colour map (x -> m x + b; m (B,3,3), b (B,3)) takes the
    source domain's mean thumbnail `mean_from` (3,h,w) from the target's `mean_to`: MSE of
    m @ mean_from + b against mean_to. Both domains share their layouts in distribution (sky
    above, road below), and a linear map commutes with the mean, so the true colour map
    satisfies this position by position; the loss is convex in (m, b)."""
    with torch.autocast(m.device.type, enabled=False):  # float32 even in a mixed-precision run
        pred = (torch.einsum("bij,jhw->bihw", m.float(), mean_from.float())
                + b.float()[:, :, None, None])
    return (pred - mean_to).pow(2).mean()
