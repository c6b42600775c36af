"""Turning a summed confusion matrix into the results JSON and a printable table.

Results schema: {"mIoU": float %, "per_class_iou": {class: float % | None}, "pixel_accuracy":
float %, "fwIoU": float %, "num_images": int, "confusion_matrix": [[int]] (rows = ground truth)}
plus "mIoU16"/"mIoU13" when `class_subsets` are given (SYNTHIA).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from uda.metrics.confusion import frequency_weighted_iou, iou_per_class, mean_iou, pixel_accuracy


def _pct(x: float):
    return None if math.isnan(x) else 100.0 * x


def results_dict(cm: torch.Tensor, num_images: int, class_names: Sequence[str],
                 class_subsets: Mapping[str, Sequence[int]] | None = None) -> dict:
    """Scores from a (C, C) confusion matrix, or from a (C+1, C+1) one whose extra column counts
    predictions of non-evaluated ids (its extra row must be zero): those pixels are false
    negatives of their ground-truth class and false positives of none (official Cityscapes
    semantics); the extra column is then returned as "predicted_ignore"."""
    cm = torch.as_tensor(cm).detach().cpu().long()
    c = len(class_names)
    extended = cm.shape == (c + 1, c + 1)
    if not extended and cm.shape != (c, c):
        raise ValueError(f"confusion matrix shape {tuple(cm.shape)} does not fit {c} classes")
    if extended and cm[c].any():
        raise ValueError("the extra (non-evaluated) row of the confusion matrix must be zero")
    classes = list(range(c))
    iou = iou_per_class(cm)[:c]
    out = {
        "mIoU": _pct(mean_iou(cm, classes)),
        "per_class_iou": {n: _pct(float(v)) for n, v in zip(class_names, iou)},
        "pixel_accuracy": _pct(pixel_accuracy(cm)),
        "fwIoU": _pct(frequency_weighted_iou(cm)),
        "num_images": int(num_images),
        "confusion_matrix": cm[:c, :c].tolist(),
    }
    if extended:
        out["predicted_ignore"] = cm[:c, c].tolist()
    for key, classes in (class_subsets or {}).items():
        out[key] = _pct(mean_iou(cm, classes))
    return out


def format_table(results: dict) -> str:
    lines = [f"{'class':<15}{'IoU %':>8}"]
    for name, v in results["per_class_iou"].items():
        lines.append(f"{name:<15}{'n/a' if v is None else f'{v:.2f}':>8}")
    def fmt(v):
        return "n/a" if v is None else f"{v:.2f}"
    lines.append(f"{'mIoU':<15}{fmt(results['mIoU']):>8}")
    for key in ("mIoU16", "mIoU13"):
        if key in results:
            lines.append(f"{key:<15}{fmt(results[key]):>8}")
    lines.append(f"pixel accuracy {fmt(results['pixel_accuracy'])} %, fwIoU "
                 f"{fmt(results['fwIoU'])} %, {results['num_images']} images")
    return "\n".join(lines)
