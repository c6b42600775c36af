"""Non-finite training state: NaN/Inf losses, parameters and buffers (BatchNorm running
statistics). A run that reaches one stops with a `NonFiniteError` (`uda train` exits 2); no
checkpoint is ever written from a non-finite state (`uda.checkpointing.AtomicCheckpoint` checks
before each save, i.e. at each validation, each periodic checkpoint and at the end), and the
message says which checkpoint, if any, is the last good one (`last_good_checkpoint`).
"""
from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from uda.checkpoint_io import peek_checkpoint

# appended to the messages by uda.train, after the last good checkpoint
ADVICE = "Try a lower learning rate or trainer.precision=32-true"


class NonFiniteError(RuntimeError):
    """The run stopped on a NaN/Inf loss or model state (reported as `uda: error:`, exit 2)."""


class NonFiniteLossError(NonFiniteError):
    """A NaN/Inf loss beyond the allowed number of skipped iterations."""


class NonFiniteStateError(NonFiniteError):
    """NaN/Inf values in the parameters or buffers (e.g. BatchNorm running_var)."""


def nonfinite_names(named: Iterable[tuple[str, object]]) -> list[str]:
    """Names of the floating-point tensors of (name, value) pairs that hold a NaN or Inf (one
    host transfer for all of them; other values are skipped)."""
    named = [(name, t) for name, t in named if torch.is_tensor(t) and t.is_floating_point()]
    if not named:
        return []
    with torch.no_grad():
        flags = torch.stack([~torch.isfinite(t).all() for _, t in named]).cpu().tolist()
    return [name for (name, _), bad in zip(named, flags) if bad]


def nonfinite_tensors(module: nn.Module) -> list[str]:
    """Names of the module's parameters and buffers holding a NaN or Inf."""
    return nonfinite_names(chain(module.named_parameters(), module.named_buffers()))


def check_finite_state(trainer, module: nn.Module) -> None:
    """NonFiniteStateError when any rank's parameters or buffers hold NaN/Inf. Collective:
    every rank must call it at the same point (as they call checkpoint saves)."""
    bad = nonfinite_tensors(module)
    found = bool(bad)
    if trainer.world_size > 1:
        found = trainer.strategy.reduce_boolean_decision(found, all=False)
    if not found:
        return
    it = getattr(module, "iteration", trainer.global_step)
    what = (f"{len(bad)} parameter/buffer tensor(s) ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''})") if bad else "the model state of another rank"
    raise NonFiniteStateError(f"non-finite values (NaN/Inf) in {what} at iteration {it}; "
                              "stopping without writing a checkpoint from this state")


def last_good_checkpoint(ckpt_dir: Path) -> str:
    """A sentence on `ckpt_dir/last.ckpt`: the last good checkpoint (finite, with its iteration),
    or plainly that no good checkpoint exists (none written, unreadable, or non-finite too)."""
    last = Path(ckpt_dir) / "last.ckpt"
    if not last.is_file():
        return "no good checkpoint exists (none was written before the failure)"
    ckpt = peek_checkpoint(last)
    state = (ckpt or {}).get("state_dict")
    if not isinstance(state, dict):  # unreadable: not a good checkpoint
        return f"no good checkpoint exists ({last} cannot be read)"
    bad = nonfinite_names(state.items())
    if bad:
        return (f"no good checkpoint exists: {last} holds non-finite values too ({len(bad)} "
                f"tensor(s), e.g. {bad[0]})")
    step = (ckpt.get("uda") or {}).get("step", "?")
    return (f"{last} (iteration {step}) is the last good checkpoint: continue from it with "
            "--resume auto")
