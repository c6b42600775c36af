"""The optimisers of a recipe: the task optimizer (segmenter, recipe modules, biased network)
and the poly schedule every optimizer of a recipe decays on. Mixed into `SegmentationModule`,
which sets `optim` (an `OptimConfig`), `max_steps`, `segmenter` and `biased`."""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

from uda.methods import OptimConfig


def poly_lambda(max_steps: int, power: float, warmup_iters: int = 0,
                warmup_ratio: float = 1e-6):
    """LR factor (1 - it / max_steps) ** power, floored at 0 past max_steps; during a linear
    warmup (it < warmup_iters) times 1 - (1 - it / warmup_iters) * (1 - warmup_ratio), mmcv's
    `linear` warmup of the poly rate (DAFormer: 1500 iterations, ratio 1e-6)."""
    def factor(it: int) -> float:
        f = max(0.0, 1.0 - it / max_steps) ** power
        if it < warmup_iters:
            f *= 1.0 - (1.0 - it / warmup_iters) * (1.0 - warmup_ratio)
        return f
    return factor


def build_optimizer(params, o: OptimConfig):
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=(o.momentum, 0.99),
                                weight_decay=o.weight_decay)
    if o.name == "adamw":  # DAFormer's: betas (0.9, 0.999), decoupled weight decay 0.01
        return torch.optim.AdamW(params, lr=o.lr, betas=(o.momentum, 0.999),
                                 weight_decay=o.weight_decay)
    raise ValueError(f"unknown optimizer '{o.name}' (method.optim.name: sgd | adam | adamw)")


class TaskOptimizer:
    def poly(self, optimizer) -> LambdaLR:
        """The poly schedule over `optim.poly_horizon` iterations, or `max_steps` when unset
        (stepped once per iteration), after the linear warmup of `optim.warmup_iters` when set.
        Every optimizer of a recipe decays on it (the official AdaptSegNet / ADVENT code decays
        the discriminators' Adam the same way)."""
        o = self.optim
        return LambdaLR(optimizer, poly_lambda(o.poly_horizon or self.max_steps, o.poly_power,
                                               o.warmup_iters, o.warmup_ratio))

    def task_optimizer(self):
        """(optimizer, scheduler) of the segmenter (its param groups: heads at 10x lr), of the
        recipe's own modules (`recipe_param_groups`) and of the biased network, when there is
        one."""
        lr = self.optim.lr
        groups = self.segmenter.param_groups(lr) + self.recipe_param_groups(lr)
        if self.biased is not None:  # trained by its own (GCE) loss in the same step
            groups += self.biased.param_groups(lr)
        opt = build_optimizer(groups, self.optim)
        self._task_opt = opt  # stepped only through task_step (uda.modules.steps)
        return opt, self.poly(opt)

    def recipe_param_groups(self, lr: float) -> list[dict]:
        """Optimizer groups of the recipe's own trained modules outside the segmenter (none
        here), stepped with the task network."""
        return []
