"""The optimizer steps of every recipe: guarded against non-finite losses, and the task
network's step with the debiasing terms always included.

`backward_step(optimizer, loss, name)`: zero_grad, manual_backward, step, unless the loss is
NaN/Inf on any rank (then the iteration is skipped, up to trainer.max_nonfinite_skips times).
`task_step(optimizer, losses, batch)`: the step of the task optimizer (the one made by
`task_optimizer`): the recipe's terms plus `debias_losses(batch)` (data.debias), summed. The
task optimizer can only be stepped through it, and a batch whose source labels need
`source_loss` (blended pairs, LfF weights) must have gone through it: a recipe cannot leave
debiasing out. Mixed into `SegmentationModule`.
"""
from __future__ import annotations

from typing import Mapping

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from uda.nonfinite import NonFiniteLossError


class GuardedSteps:
    #: iterations with a non-finite loss that may be skipped before the run stops (0: none)
    max_nonfinite_skips = 0

    def backward_step(self, optimizer, loss: torch.Tensor, name: str) -> bool:
        """zero_grad, manual_backward, step: the recipe's optimizer step. A NaN/Inf loss on any
        rank (decided jointly, so all ranks skip together) skips the step and returns False, up
        to `max_nonfinite_skips` times; after that NonFiniteLossError stops the run before any
        checkpoint is written from the bad state (`uda.train` then names the last good one)."""
        self._check_task_optimizer(optimizer)
        bad = not bool(torch.isfinite(loss.detach()).all())
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            self.nonfinite_skips = getattr(self, "nonfinite_skips", 0) + 1
            where = f"non-finite {name} loss ({float(loss.detach()):.4g}) at iteration {self.iteration}"
            if self.nonfinite_skips > self.max_nonfinite_skips:
                raise NonFiniteLossError(f"{where}; stopping (trainer.max_nonfinite_skips=N "
                                         "skips up to N such iterations)")
            rank_zero_warn(f"{where}: iteration skipped ({self.nonfinite_skips}/"
                           f"{self.max_nonfinite_skips} allowed)")
            with torch.no_grad():  # the bad forward already moved BN statistics: undo it
                for buf, saved in zip(self.buffers(), self._buffer_snapshot):
                    buf.copy_(saved)
            self._count_skipped_steps()
            return False
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self._steps_this_iteration = getattr(self, "_steps_this_iteration", 0) + 1
        return True

    def _count_skipped_steps(self) -> None:
        """A skipped step ends its iteration (the recipe returns): count the optimizer steps the
        iteration will not take, so that Lightning's global_step stays exactly
        optimizer_steps_per_iteration x iterations and `iteration` (seeds, schedules of
        validation, checkpoints, max_steps) does not drift after a skip."""
        missing = self.optimizer_steps_per_iteration - getattr(self, "_steps_this_iteration", 0)
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        for _ in range(max(missing, 0)):
            progress.increment_ready()
            progress.increment_completed()
        self._steps_this_iteration = self.optimizer_steps_per_iteration

    def on_train_batch_start(self, batch, batch_idx):
        self._steps_this_iteration = 0
        self._source_loss_used = False
        if self.max_nonfinite_skips > 0:  # buffers are small (BN statistics): cheap to keep
            self._buffer_snapshot = [b.detach().clone() for b in self.buffers()]

    def task_step(self, optimizer, losses: Mapping[str, torch.Tensor], batch,
                  name: str = "segmentation") -> tuple[bool, dict[str, torch.Tensor]]:
        """The task network's step on the recipe's `losses` (already weighted) plus the
        debiasing terms; returns (stepped, every term)."""
        src = batch["source"]
        needs_source_loss = "lam" in src or self.debias_settings.get("lff")
        if needs_source_loss and not getattr(self, "_source_loss_used", False):
            raise RuntimeError(f"{type(self).__name__}: data.debias blends source labels or "
                               "weights source pixels, but the recipe's source loss did not "
                               "go through source_loss(logits, batch['source'])")
        terms = {**losses, **self.debias_losses(batch)}
        self._in_task_step = True
        try:
            stepped = self.backward_step(optimizer, sum(terms.values()), name)
        finally:
            self._in_task_step = False
        self.lff_update()
        return stepped, terms

    def _check_task_optimizer(self, optimizer) -> None:
        inner = getattr(optimizer, "optimizer", optimizer)  # Lightning wraps optimizers
        if inner is getattr(self, "_task_opt", None) and not getattr(self, "_in_task_step", False):
            raise RuntimeError(f"{type(self).__name__} steps the task optimizer with "
                               "backward_step: use task_step(optimizer, losses, batch), which "
                               "adds the data.debias terms")
