"""VFM-UDA++'s feature distance to a frozen vision foundation model (Englert & Dubbelman, ICCVW
2025, Sec. 3.2; tue-mps/vfm-uda-plusplus training/uda/uda.py `get_feature_distance_loss`), as a
pure tensor function. The recipe (uda.modules.vfm) supplies the student's projected features and
the frozen model's.

Per feature cell: 0.1 x the smooth-L1 distance (beta 1) averaged over channels + 0.9 x (1 - the
cosine similarity over channels); the loss is the mean over every cell of every image: no class
or confidence selection (unlike DAFormer's thing-class distance, uda.losses.feature_distance).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: the weights of the two terms per cell (VFM-UDA++'s constants)
SMOOTH_L1_WEIGHT, COSINE_WEIGHT = 0.1, 0.9


def vfm_feature_distance(student: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """Mean over cells of 0.1 x mean_c smooth_l1(student, frozen) + 0.9 x (1 - cos(student,
    frozen)) for (B,C,h,w) maps; `frozen` is resized bilinearly to the student's grid when they
    differ, and carries no gradient. Unweighted (the recipe multiplies by fd_source /
    fd_target)."""
    frozen = frozen.detach().float()
    student = student.float()
    if frozen.shape[-2:] != student.shape[-2:]:
        frozen = F.interpolate(frozen, size=student.shape[-2:], mode="bilinear",
                               align_corners=False)
    l1 = F.smooth_l1_loss(student, frozen, reduction="none").mean(1)
    cos = F.cosine_similarity(student, frozen, dim=1)
    return (SMOOTH_L1_WEIGHT * l1 + COSINE_WEIGHT * (1 - cos)).mean()
