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


def unintended_eval_modules(module: nn.Module) -> list[str]:
    """Names of the submodules of `module` in eval mode that `module.train()` would switch to
    training. Modules kept in eval by design (a `train()` override: frozen BatchNorm, a frozen
    perceptual network) are not listed. Every module's mode is left as it was."""
    modes = {m: m.training for m in module.modules()}
    try:
        module.train()
        return [name or type(module).__name__ for name, m in module.named_modules()
                if m.training and not modes[m]]
    finally:
        for m, flag in modes.items():
            m.training = flag
