"""Dataset-level segmentation metrics as pure tensor functions.

Convention: confusion matrix `cm[g, p]` counts pixels with ground truth class `g` predicted as `p`
(int64, shape (C, C)). Pixels whose ground truth is `ignore_index` (or outside [0, C)) are not
counted. Accumulate by summing matrices (over batches and over DDP ranks); derive every score
from the summed matrix, never by averaging per-image scores.
"""
from __future__ import annotations

from typing import Sequence

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """Confusion matrix of integer predictions vs targets of the same shape -> (C, C) int64."""
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    valid = (target >= 0) & (target < num_classes) & (target != ignore_index)
    target = target[valid]
    pred = pred[valid]
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predictions must lie in [0, {num_classes}); got values "
                         f"{int(pred.min())}..{int(pred.max())}")
    idx = target * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU per class, float64; NaN for a class absent from both ground truth and prediction."""
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tp / union
    iou[union == 0] = float("nan")
    return iou


def mean_iou(cm: torch.Tensor, classes: Sequence[int] | None = None) -> float:
    """nanmean of per-class IoU (optionally over a subset of classes, e.g. SYNTHIA's 16/13)."""
    iou = iou_per_class(cm)
    if classes is not None:
        iou = iou[list(classes)]
    valid = ~torch.isnan(iou)
    return float(iou[valid].mean()) if valid.any() else float("nan")


def pixel_accuracy(cm: torch.Tensor) -> float:
    total = cm.sum()
    return float(cm.diagonal().sum().double() / total) if total > 0 else float("nan")


def frequency_weighted_iou(cm: torch.Tensor) -> float:
    """fwIoU: per-class IoU weighted by the class's ground-truth pixel frequency."""
    freq = cm.sum(1).double()
    iou = iou_per_class(cm)
    present = freq > 0
    if not present.any():
        return float("nan")
    return float((freq[present] * iou[present]).sum() / freq[present].sum())
