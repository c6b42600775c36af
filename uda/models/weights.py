"""Loading pretrained weights from local files into segmenters, by name and shape.

Nothing is downloaded here; files are read with `torch.load(weights_only=True)` (``.safetensors``
files with `safetensors.torch.load_file`). Each network says how the keys of the formats it knows
map onto its own (`uda.models.weight_formats`, `uda.models.vit_weights`,
`uda.models.mit_weights`); the format is named in
the log and in the `LoadReport`, and module tensors the file leaves as initialised are listed in
a warning.
A checkpoint of a uda run (it holds a "uda" entry) is accepted as a warm start only when it fits:
every backbone tensor (every tensor, for a segmenter without a `backbone`) is loaded; heads may
differ. Anything else is a `WeightsError` that names `uda train --resume` and `uda evaluate
--checkpoint`, what such a file is usually meant for.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn

log = logging.getLogger(__name__)

# Attribute names under which a segmenter may sit inside a saved object: nn.DataParallel /
# DDP ("module."), the LightningModules of this project ("segmenter."), common wrappers.
WRAPPER_PREFIXES = ("module.", "segmenter.", "model.", "net.")
UNINITIALISED_SHOWN = 40  # tensor names listed in the warning


@dataclass
class LoadReport:
    """What `load_weights` did: counts of tensors (parameters and buffers) copied."""
    path: str
    loaded: int = 0                      # total tensors copied into the module
    backbone: int = 0                    # ... of which backbone tensors
    heads: int = 0                       # ... of which head (classifier) tensors
    shape_mismatch: list[str] = field(default_factory=list)  # names matched, shapes differ
    unused: int = 0                      # tensors in the file that matched nothing (or ignored)
    missing: int = 0                     # module tensors left as initialised (len(uninitialised))
    format: str = ""                     # the file's format, by name
    uninitialised: list[str] = field(default_factory=list)  # ... their names (no BN counters)

    def __int__(self) -> int:
        return self.loaded

    def summary(self) -> str:
        """One phrase for the run's start line: the format and what was loaded."""
        left = f", {self.missing} module tensors left as initialised" if self.missing else ""
        return f"{self.format}: {self.loaded} tensors loaded{left}"


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit; the message names the file."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file with ``torch.load(weights_only=True)`` (no code in the
    file is executed; ``.safetensors`` files with safetensors). Accepts a bare state dict or a
    dict holding one under ``"state_dict"`` or ``"model"`` (Lightning / training checkpoints).
    Raises FileNotFoundError / WeightsError naming the file."""
    return _state_dict(_read(path), path)


def _read(path: str | Path):
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {p}")
    if p.suffix == ".safetensors":
        return _read_safetensors(p)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors, truncated files, non-torch files
        raise WeightsError(f"cannot read pretrained weights file {p} with torch.load(weights_only="
                           f"True): {type(e).__name__}: {_one_line(e)}") from e


def _one_line(e: Exception) -> str:
    """An exception's message on one line; of torch's multi-line weights_only refusal, the
    unpickler's own reason (its advice to load with weights_only=False is not ours to give)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    reason = next((lines[i + 1] for i, line in enumerate(lines[:-1])
                   if line.endswith("WeightsUnpickler error:")), None)
    return reason or " ".join(lines)


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file (HF hub / timm / SMP weights) as a state dict."""
    from safetensors.torch import load_file
    try:
        return load_file(str(p), device="cpu")
    except Exception as e:  # header or data errors
        raise WeightsError(f"cannot read pretrained weights file {p} as safetensors: "
                           f"{type(e).__name__}: {e}") from e


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


@dataclass(frozen=True)
class WeightsFormat:
    """How the tensors of a file map onto a module: ``candidates(key)`` lists the module names a
    (wrapper-stripped) file key may stand for (first existing name wins), ``ignore(key)`` drops a
    key on purpose (``skipped`` says which, for the report). ``layout`` / ``input_convention`` /
    ``upsample``: what the weights were trained with, None when the file does not say.
    ``convert``: when set, the file's tensors (wrapper-stripped keys) pass through it before they
    are matched (renaming, resampling; it may raise WeightsError when the file does not fit)."""
    name: str
    candidates: Callable[[str], Iterable[str]]
    ignore: Callable[[str], bool] = lambda key: False
    layout: Optional[str] = None
    input_convention: Optional[str] = None
    upsample: Optional[str] = None
    skipped: str = ""
    convert: Optional[Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = None


def load_matching_weights(module: nn.Module, path: str | Path,
                          candidates: Callable[[str], Iterable[str]],
                          backbone_prefix: str = "backbone.",
                          ignore: Callable[[str], bool] = lambda k: False) -> LoadReport:
    """`load_weights` with one fixed mapping (a file of this module's own names, say)."""
    fmt = WeightsFormat(f"{type(module).__name__} state dict", candidates, ignore)
    return load_weights(module, path, lambda keys, obj: fmt, backbone_prefix=backbone_prefix)


def load_weights(module: nn.Module, path: str | Path,
                 detect: Callable[[list[str], object], WeightsFormat],
                 check: Callable[[WeightsFormat], None] = lambda fmt: None,
                 backbone_prefix: str = "backbone.") -> LoadReport:
    """Copy every tensor of the file at ``path`` whose mapped name and shape match a parameter or
    buffer of ``module``.

    ``detect(keys, obj)`` names the file's format from its wrapper-stripped keys (and the loaded
    object, for run checkpoints) and gives the mapping; ``check(fmt)`` may refuse it (raising
    WeightsError). A name that matches with a different shape is skipped and listed. Module tensors
    left as initialised (``num_batches_tracked`` counters aside) are listed in a warning.
    Raises FileNotFoundError (missing file) or WeightsError (unreadable, nothing matched, or a
    uda run checkpoint that does not fit: see the module docstring), naming the file. Logs the
    format and counts and returns a `LoadReport`.
    """
    obj = _read(path)
    src = _state_dict(obj, path)
    fmt = detect([strip_wrapper_prefixes(k) for k in src], obj)
    check(fmt)
    if fmt.convert is not None:
        src = fmt.convert({strip_wrapper_prefixes(k): v for k, v in src.items()})
    report = LoadReport(path=str(path), format=fmt.name)
    done = _copy(module, src, fmt, report, backbone_prefix)
    if isinstance(obj, dict) and "uda" in obj:
        _check_run_checkpoint(module, path, obj, done, backbone_prefix)
    if report.loaded == sum(n.endswith("num_batches_tracked") for n in done):  # nothing real
        extra = (f"; {len(report.shape_mismatch)} names matched with other shapes, e.g. "
                 f"{report.shape_mismatch[:3]}") if report.shape_mismatch else ""
        raise WeightsError(f"no tensor of pretrained weights file {path} ({fmt.name}) matches "
                           f"{type(module).__name__} ({len(src)} tensors in the file, e.g. "
                           f"{list(src)[:3]}){extra}")
    _log(module, report, fmt)
    return report


def _copy(module: nn.Module, src: dict[str, torch.Tensor], fmt: WeightsFormat,
          report: LoadReport, backbone_prefix: str) -> set[str]:
    """Copy the matching tensors of ``src`` into ``module``, filling ``report``; the names done."""
    own = module.state_dict(keep_vars=True)
    done: set[str] = set()
    with torch.no_grad():
        for raw_key, tensor in src.items():
            key = strip_wrapper_prefixes(raw_key)
            name = None if fmt.ignore(key) else next((c for c in fmt.candidates(key) if c in own),
                                                     None)
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
    report.uninitialised = [n for n in own if n not in done
                            and not n.endswith("num_batches_tracked")]
    report.missing = len(report.uninitialised)
    return done


def _log(module: nn.Module, report: LoadReport, fmt: WeightsFormat) -> None:
    log.info("loaded %d tensors from %s (format: %s) into %s (backbone %d, heads %d); %d unused "
             "in the file%s, %d shape mismatches", report.loaded, report.path, fmt.name,
             type(module).__name__, report.backbone, report.heads, report.unused,
             f" ({fmt.skipped})" if fmt.skipped else "", len(report.shape_mismatch))
    if report.uninitialised:
        names = report.uninitialised
        shown = ", ".join(names[:UNINITIALISED_SHOWN]) + (
            f", ... (+{len(names) - UNINITIALISED_SHOWN} more)" if len(names) > UNINITIALISED_SHOWN
            else "")
        log.warning("%s (%s): %d tensors of %s are not in the file%s and keep their random "
                    "initialisation: %s", report.path, fmt.name, len(names), type(module).__name__,
                    " or are shaped differently" if report.shape_mismatch else "", shown)


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
