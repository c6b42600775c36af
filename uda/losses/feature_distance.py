"""DAFormer's thing-class ImageNet feature distance (Hoyer et al. CVPR 2022, Sec. 3.3).

The student's encoder features on source images are pulled towards those of a frozen copy of
the network at its (ImageNet-pretrained) initial weights, only where the source label, pooled
to the feature grid, is a "thing" class. As pure tensor functions; the recipe (uda.modules.
daformer) supplies the two feature maps.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from uda.methods import THING_CLASSES  # DAFormer's imnet_feature_dist_classes

IGNORE_INDEX = 255


def downscale_label_ratio(labels: torch.Tensor, scale_factor: int, min_ratio: float,
                          num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels (B,H,W) int -> (B, H // s, W // s) int64 on the grid of s x s cells (s =
    `scale_factor` > 1): each cell takes its most frequent value (ignore counted as a value of
    its own), and becomes `ignore_index` when that value is ignore or covers less than
    `min_ratio` of the cell (DAFormer's `downscale_label_ratio`; ties go to the lower class)."""
    if scale_factor <= 1:
        raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
    lab = labels.long().clone()
    lab[(lab == ignore_index) | (lab < 0) | (lab >= num_classes)] = num_classes
    one_hot = F.one_hot(lab, num_classes + 1).permute(0, 3, 1, 2).float()
    ratio, out = F.avg_pool2d(one_hot, kernel_size=scale_factor).max(dim=1)
    out[(out == num_classes) | (ratio < min_ratio)] = ignore_index
    return out


def thing_mask(labels: torch.Tensor, feature_size: tuple[int, int], classes: Sequence[int],
               min_ratio: float, num_classes: int,
               ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(B,h,w) bool on the feature grid: cells whose pooled label (`downscale_label_ratio`,
    scale factor = label width // feature width, as DAFormer takes it) is one of `classes`.
    A network whose feature grid is not the label grid divided by that factor (padding, odd
    strides) gets the label resized (nearest) to factor x the feature size first."""
    h, w = feature_size
    s = labels.shape[-1] // w
    if labels.shape[-2] // s != h or labels.shape[-1] // s != w:
        labels = F.interpolate(labels[:, None].float(), size=(h * s, w * s),
                               mode="nearest")[:, 0].long()
    pooled = downscale_label_ratio(labels, s, min_ratio, num_classes, ignore_index)
    return torch.isin(pooled, torch.as_tensor(list(classes), device=pooled.device))


def masked_feature_distance(student: torch.Tensor, frozen: torch.Tensor,
                            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the cells of `mask` (B,h,w) (all cells when None) of the L2 norm over channels
    of student - frozen (B,C,h,w); frozen carries no gradient. 0 (with a gradient path) when
    the mask is empty, where DAFormer's mean of no elements is NaN."""
    dist = torch.linalg.vector_norm(student.float() - frozen.detach().float(), dim=1)
    if mask is None:
        return dist.mean()
    return dist[mask].sum() / mask.sum().clamp(min=1)


def thing_feature_distance(student: torch.Tensor, frozen: torch.Tensor, labels: torch.Tensor,
                           classes: Sequence[int] = THING_CLASSES, min_ratio: float = 0.75,
                           num_classes: int = 19,
                           ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """DAFormer's feature distance: `masked_feature_distance` of the encoder features (B,C,h,w)
    over the thing cells of the source labels (B,H,W) (`thing_mask`); unweighted (the recipe
    multiplies by fd_lambda)."""
    mask = thing_mask(labels, tuple(student.shape[-2:]), classes, min_ratio, num_classes,
                      ignore_index)
    return masked_feature_distance(student, frozen, mask)
