"""Synchronised BatchNorm for any torch.distributed backend (gloo on CPU, nccl on GPU).

`torch.nn.SyncBatchNorm` only runs on CUDA tensors, so CPU (gloo) runs cannot exercise the
behaviour multi-GPU training relies on (batch 2 per GPU makes per-GPU statistics noise).
This module provides:

- `AllReduceBatchNorm2d`: a drop-in `nn.BatchNorm2d` whose training-mode statistics are those of
  the global batch (all ranks of its process group). Forward and backward equal those of one
  `nn.BatchNorm2d` applied to the concatenation of the ranks' batches (see the class docstring
  for the exact gradient contract).
- `convert_sync_batchnorm(module)`: swaps `nn.BatchNorm2d` layers for `nn.SyncBatchNorm` (CUDA)
  or `AllReduceBatchNorm2d` (anything else), sharing their parameters and buffers.
- `broadcast_buffers_(module, src)`: makes every rank hold rank `src`'s buffers (running stats),
  for runs that train with per-rank BatchNorm and must validate / checkpoint one model.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["AllReduceBatchNorm2d", "convert_sync_batchnorm", "broadcast_buffers_"]

_REDUCE_DIMS = (0, 2, 3)  # every dim of (N, C, H, W) but the channel


def _group_size(group) -> int:
    """World size of `group` (None = default group); 1 when no process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _global_batch_stats(x: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel (mean, biased var) of x over every rank's batch, in float64, and the count.

    One fused all_reduce (SUM) of a float64 (2C+1,) tensor [count, sum_c, sum_sq_c].
    Numerical choice: var = E[x^2] - mean^2 cancels catastrophically in float32 when
    |mean| >> std (activations after ReLU, un-normalised images). So each rank first computes
    its local mean and *centred* variance in float32 (torch.var_mean, stable), and only the
    reconstruction sum_sq = n * (var_local + mean_local^2) and the cross-rank combination are
    done in float64, where the cancellation costs ~1e-16 * mean^2 / var: float32 rounding then
    touches only the local variances, never mean^2. The count is carried in the same tensor
    (exact in float64 up to 2^53 elements) so ranks with different batch sizes, or an empty
    one, weight their statistics correctly.
    """
    c = x.shape[1]
    n_local = x.numel() // c if c else 0
    stats = torch.zeros(2 * c + 1, dtype=torch.float64, device=x.device)
    stats[0] = n_local
    if n_local > 0:
        # Statistics in float32 at least: half-precision inputs (autocast) must not be reduced
        # in half, as F.batch_norm also accumulates in float32 for them.
        xs = x if x.dtype in (torch.float32, torch.float64) else x.float()
        var_l, mean_l = torch.var_mean(xs, dim=_REDUCE_DIMS, correction=0)
        mean_l, var_l = mean_l.double(), var_l.double()
        stats[1:c + 1] = n_local * mean_l
        stats[c + 1:] = n_local * (var_l + mean_l * mean_l)
    dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)
    count = int(stats[0].item())
    if count == 0:
        return stats[1:c + 1], stats[c + 1:], 0
    mean = stats[1:c + 1] / count
    var = (stats[c + 1:] / count - mean * mean).clamp_(min=0.0)
    return mean, var, count


class _GlobalBatchNormFn(torch.autograd.Function):
    """y = (x - mean) * invstd * weight + bias with mean/invstd of the GLOBAL batch.

    mean and invstd come in as constants (computed under no_grad); the backward accounts for
    their dependence on every rank's x analytically, as for single-process BatchNorm:

        dx = weight * invstd * (dy - sum(dy) / N - x_hat * sum(dy * x_hat) / N)

    where the two sums run over the global batch (one fused all_reduce of a (2C,) tensor) and
    N is the global count. dweight = sum(dy * x_hat) and dbias = sum(dy) are LOCAL sums: the
    data-parallel wrapper (DDP) reduces parameter gradients across ranks itself.
    Every rank must therefore run backward through this layer (as with nn.SyncBatchNorm).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd, count, group):
        xs = x if x.dtype in (torch.float32, torch.float64) else x.float()
        shape = (1, -1, 1, 1)
        scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
        # (x - mean) * scale rather than x * scale + shift: the latter cancels in float32 when
        # |mean| >> std, the case the float64 statistics were computed to survive.
        y = (xs - mean.view(shape)) * scale.view(shape)
        if bias is not None:
            y = y + bias.to(y.dtype).view(shape)
        # Save the caller's x (not the float32 copy) so half inputs keep half the memory.
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.count = count
        ctx.group = group
        ctx.has_bias = bias is not None
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, invstd = ctx.saved_tensors
        shape = (1, -1, 1, 1)
        xs = x if x.dtype in (torch.float32, torch.float64) else x.float()
        dy = grad_out.to(xs.dtype)
        x_hat = (xs - mean.view(shape)) * invstd.view(shape)
        sum_dy = dy.sum(_REDUCE_DIMS)
        sum_dy_xhat = (dy * x_hat).sum(_REDUCE_DIMS)

        grad_weight = grad_bias = grad_input = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = sum_dy_xhat.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = sum_dy.to(weight.dtype)  # affine: weight and bias both exist
        if ctx.needs_input_grad[0]:
            # needs_input_grad is the same on every rank (same model), so either all ranks
            # enter this collective or none does.
            c = sum_dy.numel()
            sums = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=ctx.group)
            mean_dy = (sums[:c] / ctx.count).view(shape)
            mean_dy_xhat = (sums[c:] / ctx.count).view(shape)
            scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
            grad_input = ((dy - mean_dy - x_hat * mean_dy_xhat) * scale.view(shape)).to(x.dtype)
        return grad_input, grad_weight, grad_bias, None, None, None, None


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training statistics cover the global batch of `process_group`.

    Contract:
    - training mode, initialised process group of world size > 1: batch mean / variance are
      computed over the inputs of all ranks (which may have different batch sizes, including
      0); each rank's output is its slice of what one nn.BatchNorm2d would output for the
      concatenated batch; running_mean / running_var / num_batches_tracked are updated exactly
      as that nn.BatchNorm2d would (unbiased global variance, `momentum`, or the cumulative
      average when momentum is None), so they stay identical on all ranks.
      Gradients: the input gradient equals the reference's for the same slice; weight / bias
      gradients are the local contributions, whose SUM over ranks equals the reference's (DDP
      averages them, i.e. yields reference / world_size when each rank's loss is its share of
      a summed loss). Every rank must call forward and backward the same number of times:
      both contain collectives.
    - eval mode, no process group, or world size 1: exactly nn.BatchNorm2d.forward.
    - state_dict keys are those of nn.BatchNorm2d (checkpoints interchange).
    `process_group`: the group to synchronise over (None: the default group).
    Statistics are computed in float32 (float64 for the cross-rank combination) whatever the
    input dtype; the output has the input's dtype.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None,
                 device=None, dtype=None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Synchronise only in training mode. Eval mode with track_running_stats=False also
        # normalises with batch statistics, but eval batches are per-rank work (nothing to
        # backpropagate, sharded without padding), and nn.SyncBatchNorm does not sync then.
        if not self.training or _group_size(self.process_group) == 1:
            return super().forward(x)
        self._check_input_dim(x)

        with torch.no_grad():
            mean, var, count = _global_batch_stats(x, self.process_group)
        if count <= 1:
            # Same rule (and error type) as F.batch_norm, judged on the global batch; every
            # rank sees the same count, so all raise together instead of deadlocking.
            raise ValueError("Expected more than 1 value per channel when training, got global "
                             f"count {count} (local input size {list(x.shape)})")

        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                    factor = 1.0 / float(self.num_batches_tracked)
                else:
                    factor = self.momentum
                unbiased = var * (count / (count - 1))
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype),
                                                        alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype),
                                                       alpha=factor)

        # Normalise in the statistics' working precision: float32 unless the input is float64.
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        invstd = torch.rsqrt(var + self.eps).to(work)
        return _GlobalBatchNormFn.apply(x, self.weight, self.bias, mean.to(work), invstd,
                                        count, self.process_group)


def _is_frozen(bn: nn.BatchNorm2d) -> bool:
    """Eval mode with affine parameters that do not train (e.g. `BackboneSegmenter.freeze_bn`).

    Such a layer never uses batch statistics, so synchronising it buys nothing. An eval-mode
    layer whose parameters still train (or that has none) is converted: it may be switched
    back to training later by `.train()`, and converting is harmless in eval mode anyway.
    """
    params = [p for p in (bn.weight, bn.bias) if p is not None]
    return not bn.training and bool(params) and not any(p.requires_grad for p in params)


def _module_on_cuda(module: nn.Module) -> bool:
    return any(t.is_cuda for t in module.parameters()) or any(t.is_cuda for t in module.buffers())


def _replacement(bn: nn.BatchNorm2d, cuda: bool, process_group) -> nn.Module:
    cls = nn.SyncBatchNorm if cuda else AllReduceBatchNorm2d
    state = next(iter([*bn.parameters(), *bn.buffers()]), None)
    new = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
              track_running_stats=bn.track_running_stats, process_group=process_group,
              device=None if state is None else state.device)
    # Share (not clone) parameters and buffers: an optimizer or EMA built before conversion
    # keeps pointing at the live tensors, and requires_grad / dtype / device come along as is.
    if bn.affine:
        new.weight = bn.weight
        new.bias = bn.bias
    if bn.track_running_stats:
        new.running_mean = bn.running_mean
        new.running_var = bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new


def convert_sync_batchnorm(module: nn.Module, backend_cuda: bool | None = None,
                           process_group=None) -> nn.Module:
    """Replace every `nn.BatchNorm2d` in `module` by a synchronised one; return the module.

    - Target type: `nn.SyncBatchNorm` when `backend_cuda` is True, or when it is None and any
      parameter / buffer of `module` is on CUDA; otherwise `AllReduceBatchNorm2d`.
    - Only layers whose type is exactly `nn.BatchNorm2d` are replaced: subclasses may override
      forward (the replacement would silently drop that), and BatchNorm1d/3d, InstanceNorm,
      GroupNorm and already synchronised layers are left as they are.
    - Frozen layers (eval mode, affine parameters with requires_grad False, as left by
      `freeze_bn()`) are left unconverted: they always use running statistics.
    - The replacement shares the original's weight / bias / running stats / num_batches_tracked
      tensors and copies eps, momentum, affine, track_running_stats and the train/eval mode, so
      outputs, state_dict keys and requires_grad are unchanged.
    Children are replaced in place; the return value differs from `module` only when `module`
    itself is a BatchNorm2d.
    """
    cuda = _module_on_cuda(module) if backend_cuda is None else bool(backend_cuda)

    def convert(m: nn.Module) -> nn.Module:
        if type(m) is nn.BatchNorm2d:
            return m if _is_frozen(m) else _replacement(m, cuda, process_group)
        for name, child in m.named_children():
            new = convert(child)
            if new is not child:
                setattr(m, name, new)
        return m

    return convert(module)


@torch.no_grad()
def broadcast_buffers_(module: nn.Module, src: int = 0, process_group=None) -> nn.Module:
    """Overwrite every buffer of `module` with rank `src`'s (global rank), in place; return it.

    For runs that train with per-rank BatchNorm (SyncBN off): the running statistics drift
    apart across ranks, and validation / checkpointing must see one model. All ranks must call
    this together with identically structured modules. Buffers are packed into one tensor per
    (device, dtype) so a ResNet-101's ~300 BN buffers cost a few broadcasts, not hundreds.
    No-op without an initialised process group or with world size 1.
    """
    if _group_size(process_group) == 1:
        return module
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for buf in module.buffers():
        buckets.setdefault((buf.device, buf.dtype), []).append(buf)
    for bufs in buckets.values():
        flat = torch.cat([b.reshape(-1) for b in bufs])
        dist.broadcast(flat, src=src, group=process_group)
        offset = 0
        for b in bufs:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()
    return module
