"""Temporary eval mode for a module that is training."""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(module: nn.Module):
    """`module` and all its submodules in eval mode inside the block; each one's own training
    flag is restored on exit (also on error), whatever mix of modes it had."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, flag in modes.items():
            m.training = flag
