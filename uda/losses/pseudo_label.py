"""Pseudo-labels of self-training and their confidence weights (DACS, DAFormer)."""
from __future__ import annotations

import torch


def pseudo_label(teacher_logits: torch.Tensor, threshold: float = 0.968,
                 per_image: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels and their confidence weight from a (mean) teacher's logits.

    teacher_logits (B,C,H,W) or (B,C). Returns labels (B,H,W) / (B,) int64 = argmax, and
    weight (B,) float32 = fraction of the image's pixels whose max softmax probability is
    >= threshold (DACS / DAFormer; for (B,C) it is 0 or 1). DACS and DAFormer compute that
    fraction over the whole batch: per_image=False gives that value for every image.
    """
    prob = torch.softmax(teacher_logits.detach().float(), dim=1)
    conf, labels = prob.max(dim=1)
    above = (conf >= threshold).float().reshape(conf.shape[0], -1)
    weight = above.mean(1) if per_image else above.mean().expand(conf.shape[0]).clone()
    return labels, weight
