"""The loss of a blended sample (Mixup, SelecMix): the labels' losses mixed by the blend ratio."""
from __future__ import annotations

from typing import Callable

import torch


def mixed_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor,
               reduction: str = "mean") -> torch.Tensor:
    """lam * L(logits, y_a) + (1 - lam) * L(logits, y_b), per sample.

    `loss_fn(logits, target)` must return UNREDUCED losses with the batch first: (B,) for class
    labels or (B,H,W) for masks (e.g. `F.cross_entropy(..., reduction="none",
    ignore_index=255)`, which is 0 at ignored pixels). lam (B,) or a scalar. reduction "mean"
    (mean over all elements, ignored pixels included as zeros) or "none".
    """
    la, lb = loss_fn(logits, y_a), loss_fn(logits, y_b)
    lam = torch.as_tensor(lam, dtype=la.dtype, device=la.device)
    if lam.dim() == 1:
        lam = lam.reshape(lam.shape[0], *([1] * (la.dim() - 1)))
    out = lam * la + (1 - lam) * lb
    if reduction == "none":
        return out
    if reduction == "mean":
        return out.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
