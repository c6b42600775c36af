"""The mean teacher of self-training (DACS, DAFormer, HRDA, MIC): a copy of the student whose
parameters follow the student's by an exponential moving average.

`EMATeacher(student, ema)` holds the copy (`net`, no gradients). `teacher(x, student)` gives its
logits as DACS and DAFormer compute them: every layer in the student's mode, dropout off (a
BatchNorm that trains in the student normalises with the target batch's own statistics and moves
only the teacher's running statistics; a frozen one keeps its fixed statistics).
`update(student, iteration)` moves it after an optimizer step with decay
alpha = min(1 - 1 / (iteration + 1), ema) (the warm-up of DACS / DAFormer; `iteration` counts
the steps done). Any recipe that wants a teacher uses this module.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, alpha: float) -> nn.Module:
    """Mean teacher, in place: p_t <- alpha * p_t + (1 - alpha) * p_s for every parameter
    (trainable or not); buffers (BatchNorm running statistics) are left as they are, as in the
    official DACS and DAFormer code, whose teacher normalises with batch statistics.

    Both modules must have the same parameter names and shapes. Returns `teacher`.
    """
    tp, sp = dict(teacher.named_parameters()), dict(student.named_parameters())
    if tp.keys() != sp.keys() or any(p.shape != sp[n].shape for n, p in tp.items()):
        raise ValueError("teacher and student have different parameters")
    for name, p in tp.items():
        p.mul_(alpha).add_(sp[name].detach().to(p.dtype), alpha=1 - alpha)
    return teacher


def ema_decay(iteration: int, ema: float) -> float:
    """alpha = min(1 - 1 / (iteration + 1), ema): 0 before any step, then warming up to `ema`."""
    return min(1.0 - 1.0 / (iteration + 1), ema)


class EMATeacher(nn.Module):
    def __init__(self, student: nn.Module, ema: float = 0.99):
        super().__init__()
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.net = copy.deepcopy(student).requires_grad_(False)
        self.ema = ema

    @torch.no_grad()
    def forward(self, x: torch.Tensor, student: nn.Module) -> torch.Tensor:
        """The teacher's logits on x, its layers in the modes of `student`'s (dropout off)."""
        for t, s in zip(self.net.modules(), student.modules()):
            t.training = s.training and not isinstance(t, nn.modules.dropout._DropoutNd)
        return self.net(x)

    def update(self, student: nn.Module, iteration: int) -> None:
        """After the optimizer step that completed `iteration` iterations."""
        ema_update_(self.net, student, ema_decay(iteration, self.ema))
