"""HRDA's multi-resolution loss (lhoyer/HRDA mmseg/models/decode_heads/hrda_head.py `losses`) as
a pure function of the three cross-entropies."""
from __future__ import annotations

import torch


def multires_loss(fused: torch.Tensor, lr: torch.Tensor | None = None,
                  hr: torch.Tensor | None = None, lambda_lr: float = 0.0,
                  lambda_hr: float = 0.1) -> torch.Tensor:
    """(1 - lambda_lr - lambda_hr) x fused + lambda_lr x lr + lambda_hr x hr: the fused
    prediction's loss weighs what the two auxiliary losses (low-resolution context, high-resolution
    detail window) leave. A term whose weight is 0 may be None (it is not computed)."""
    if lambda_lr < 0 or lambda_hr < 0 or lambda_lr + lambda_hr > 1:
        raise ValueError(f"need lambda_lr, lambda_hr >= 0 and lambda_lr + lambda_hr <= 1, got "
                         f"{lambda_lr}, {lambda_hr}")
    loss = (1 - lambda_lr - lambda_hr) * fused
    for weight, term, name in ((lambda_lr, lr, "lr"), (lambda_hr, hr, "hr")):
        if weight > 0:
            if term is None:
                raise ValueError(f"lambda_{name}={weight} needs the {name} loss")
            loss = loss + weight * term
    return loss
