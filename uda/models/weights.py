"""Loading pretrained weights from local files into segmenters, by name and shape.

Nothing is downloaded here; files are read with `torch.load(weights_only=True)`.
A checkpoint of a uda run (it holds a "uda" entry) is accepted as a warm start only when it fits:
every backbone tensor (every tensor, for a segmenter without a `backbone`) is loaded; heads may
differ. Anything else is a `WeightsError` that names `uda train --resume` and `uda evaluate
--checkpoint`, what such a file is usually meant for.
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


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit; the message names the file."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file with ``torch.load(weights_only=True)`` (no code in the
    file is executed). Accepts a bare state dict or a dict holding one under ``"state_dict"`` or
    ``"model"`` (Lightning / training checkpoints). Raises FileNotFoundError / WeightsError naming
    the file."""
    return _state_dict(_read(path), path)


def _read(path: str | Path):
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors, truncated files, non-torch files
        raise WeightsError(f"cannot read pretrained weights file {p} with torch.load(weights_only="
                           f"True): {type(e).__name__}: {e}") from e


def _state_dict(obj, p: str | Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"pretrained weights file {p} does not contain a state dict "
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
    Raises FileNotFoundError (missing file) or WeightsError (unreadable, nothing matched, or a
    uda run checkpoint that does not fit: see the module docstring), naming the file. Logs and
    returns a `LoadReport`.
    """
    obj = _read(path)
    src = _state_dict(obj, path)
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
    if isinstance(obj, dict) and "uda" in obj:
        _check_run_checkpoint(module, path, obj, done, backbone_prefix)
    if report.loaded == sum(n.endswith("num_batches_tracked") for n in done):  # nothing real
        extra = (f"; {len(report.shape_mismatch)} names matched with other shapes, e.g. "
                 f"{report.shape_mismatch[:3]}") if report.shape_mismatch else ""
        raise WeightsError(f"no tensor of pretrained weights file {path} matches "
                           f"{type(module).__name__} ({len(src)} tensors in the file, e.g. "
                           f"{list(src)[:3]}){extra}")
    log.info("loaded %d tensors from %s into %s (backbone %d, heads %d); %d unused in the file, "
             "%d shape mismatches, %d module tensors left as initialised", report.loaded, path,
             type(module).__name__, report.backbone, report.heads, report.unused,
             len(report.shape_mismatch), report.missing)
    return report


def _check_run_checkpoint(module: nn.Module, path, ckpt: dict, done: set[str],
                          backbone_prefix: str) -> None:
    """A uda run checkpoint must fill every backbone tensor (every tensor without a backbone)."""
    own = module.state_dict()
    has_backbone = any(n.startswith(backbone_prefix) for n in own)
    misfit = [n for n in own if n not in done and (n.startswith(backbone_prefix) or not has_backbone)]
    if not misfit:
        return
    info = ckpt["uda"]
    step = info.get("step", "?") if isinstance(info, dict) else "?"
    raise WeightsError(
        f"{path} is a checkpoint of a uda run (iteration {step}) whose segmenter does not fit "
        f"this {type(module).__name__}: {len(misfit)} of its tensors are missing from the file or "
        f"shaped differently (e.g. {misfit[:3]}). Set model.pretrained to backbone weights (e.g. "
        f"ImageNet) or to a run checkpoint of the same model; to continue that run use `uda "
        f"train --resume {path}`, to score it `uda evaluate --checkpoint {path}`")
