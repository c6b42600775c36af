"""Loading pretrained weights from local files into segmenters, by name and shape.

Nothing is downloaded here; files are read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)

# Attribute names under which a segmenter may sit inside a saved object: nn.DataParallel /
# DDP ("module."), the LightningModules of this project ("segmenter."), common wrappers.
WRAPPER_PREFIXES = ("module.", "segmenter.", "model.", "net.")


@dataclass
class LoadReport:
    """What `load_matching_weights` did: counts of tensors (parameters and buffers) copied."""
    path: str
    loaded: int = 0                      # total tensors copied into the module
    backbone: int = 0                    # ... of which backbone tensors
    heads: int = 0                       # ... of which head (classifier) tensors
    shape_mismatch: list[str] = field(default_factory=list)  # names matched, shapes differ
    unused: int = 0                      # tensors in the file that matched nothing (or ignored)
    missing: int = 0                     # module tensors left as initialised

    def __int__(self) -> int:
        return self.loaded


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file with ``torch.load(weights_only=True)`` (no code in the
    file is executed). Accepts a bare state dict or a dict holding one under ``"state_dict"`` or
    ``"model"`` (Lightning / training checkpoints). Raises FileNotFoundError / ValueError naming
    the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors, truncated files, non-torch files
        raise ValueError(f"cannot read pretrained weights file {p} with torch.load(weights_only="
                         f"True): {type(e).__name__}: {e}") from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"pretrained weights file {p} does not contain a state dict "
                         f"(got {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def strip_wrapper_prefixes(key: str) -> str:
    """Remove leading wrapper prefixes (``module.``, ``segmenter.``, ...) from a key."""
    changed = True
    while changed:
        changed = False
        for pre in WRAPPER_PREFIXES:
            if key.startswith(pre):
                key, changed = key[len(pre):], True
    return key


def load_matching_weights(module: nn.Module, path: str | Path,
                          candidates: Callable[[str], Iterable[str]],
                          backbone_prefix: str = "backbone.",
                          ignore: Callable[[str], bool] = lambda k: False) -> LoadReport:
    """Copy every tensor of the file at ``path`` whose (normalised) name and shape match a
    parameter or buffer of ``module``.

    Each file key has its wrapper prefixes stripped, is dropped when ``ignore(key)`` is true, and
    ``candidates(key)`` lists the module names it may stand for (first existing name wins).
    A name that matches with a different shape is skipped and listed in the report.
    Raises FileNotFoundError (missing file) or ValueError (unreadable, or nothing matched), both
    naming the file. Logs and returns a `LoadReport`.
    """
    src = read_state_dict(path)
    own = module.state_dict(keep_vars=True)
    report = LoadReport(path=str(path))
    done: set[str] = set()
    with torch.no_grad():
        for raw_key, tensor in src.items():
            key = strip_wrapper_prefixes(raw_key)
            name = None if ignore(key) else next((c for c in candidates(key) if c in own), None)
            if name is None or name in done:
                report.unused += 1
                continue
            target = own[name]
            if tuple(target.shape) != tuple(tensor.shape):
                report.shape_mismatch.append(name)
                report.unused += 1
                continue
            target.copy_(tensor.to(dtype=target.dtype))
            done.add(name)
            report.loaded += 1
            if name.startswith(backbone_prefix):
                report.backbone += 1
            else:
                report.heads += 1
    report.missing = len(own) - len(done)
    if report.loaded == 0:
        extra = (f"; {len(report.shape_mismatch)} names matched with other shapes, e.g. "
                 f"{report.shape_mismatch[:3]}") if report.shape_mismatch else ""
        raise ValueError(f"no tensor of pretrained weights file {path} matches "
                         f"{type(module).__name__} ({len(src)} tensors in the file, e.g. "
                         f"{list(src)[:3]}){extra}")
    log.info("loaded %d tensors from %s into %s (backbone %d, heads %d); %d unused in the file, "
             "%d shape mismatches, %d module tensors left as initialised", report.loaded, path,
             type(module).__name__, report.backbone, report.heads, report.unused,
             len(report.shape_mismatch), report.missing)
    return report
