"""The few lines `uda train` prints at its start and the one line at its end.

The start summary says what will run (method, network, data, crops and batch, iterations,
devices, run directory); the full resolved configuration is in the run directory's config.yaml
(`uda train --print-config` also prints it). The end line says what the run wrote.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from uda.config import Config, DebiasConfig
from uda.methods import method

def _size(hw) -> str:
    return "native size" if hw is None else "x".join(str(v) for v in hw)


def model_text(cfg: Config, weights: str | None = None) -> str:
    """The network in words; ``weights``: what loading `model.pretrained` did (its format)."""
    m = cfg.model
    if m.name == "small":
        text = f"small (width {m.width})"
    elif m.name == "deeplabv2":
        text = f"deeplabv2 {m.backbone} ({m.layout} layout, {m.input_convention} input)" + (
            ", multi-level" if m.multi_level else "") + (
            f", {m.aspp_branches} ASPP branches" if m.aspp_branches != 4 else "")
    elif m.name == "mit":
        text = f"mit_{m.variant} ({m.head} head, {m.head_dim} channels)"
    else:
        text = m.name
    if m.pretrained:
        text += f", weights from {m.pretrained}" + (f" ({weights})" if weights else "")
    return text


def method_text(cfg: Config) -> str:
    d = cfg.data.debias  # its parts in DebiasConfig's order; `biased` has no `enabled`
    debias = [f.name for f in fields(DebiasConfig)
              if getattr(getattr(d, f.name), "enabled", False)]
    return cfg.method.name + (f" + {', '.join(debias)}" if debias else "")


def processes(trainer) -> int:
    """Training processes (the world size: known before fit, unlike trainer.world_size)."""
    return trainer.num_devices * trainer.num_nodes


def devices_text(trainer) -> str:
    """`trainer` is a Lightning Trainer (already resolved: accelerator, processes, precision)."""
    kind = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
    text = f"{trainer.num_devices} x {kind}"
    if trainer.num_nodes > 1:
        text += f" x {trainer.num_nodes} nodes"
    if processes(trainer) > 1:
        text += f" ({type(trainer.strategy).__name__.removesuffix('Strategy')})"
    return f"{text}, precision {trainer.precision}"


def start_summary(cfg: Config, run_dir: Path, datamodule, trainer,
                  weights: str | None = None) -> str:
    """Six lines: what this run does and where it writes (``weights``: see `model_text`)."""
    d, t = cfg.data, cfg.trainer
    if method(cfg.method.name).labelled_target:  # the oracle
        source = f"source  = labelled target train ({len(datamodule.source_train)} images)"
    else:
        source = (f"source  {d.source.dataset} {d.source.root} ({d.source.split}: "
                  f"{len(datamodule.source_train)} images)")
    target = (f"target  {d.target.dataset} {d.target.root} ({d.target.split}: "
              f"{len(datamodule.target_train)} images, unlabelled; {d.target_val_split}: "
              f"{len(datamodule.target_val)} images)")
    world = processes(trainer)
    batch = f"batch {d.batch_size}" + (f" per process x {world} processes = global batch "
                                       f"{d.batch_size * world} per domain" if world > 1 else "")
    val = f"validation every {t.val_every}" if 0 < t.val_every < t.max_steps else \
        "validation at the end"
    return "\n".join([
        f"uda: train {method_text(cfg)}, model {model_text(cfg, weights)}, seed {cfg.seed}",
        f"  {source}",
        f"  {target}",
        f"  crop {_size(d.source_transform.crop)} (source), {_size(d.target_transform.crop)} "
        f"(target), {batch}; {t.max_steps} iterations, {val}",
        f"  devices {devices_text(trainer)}",
        f"  run dir {run_dir} (resolved config: config.yaml; print it with --print-config)",
    ])


def end_summary(run_dir: Path, results: dict) -> str:
    """One line: the run directory, its checkpoints and the final-weights mIoU."""
    from uda.checkpoint_io import recorded_info
    ckpts = run_dir / "checkpoints"
    parts = []
    best = recorded_info(ckpts / "best.ckpt")
    if best.get("val_mIoU") is not None:
        parts.append(f"best.ckpt (val mIoU {best['val_mIoU']:.2f} at iteration {best['step']})")
    last = recorded_info(ckpts / "last.ckpt")
    if last:
        parts.append(f"last.ckpt (iteration {last.get('step')})")
    return (f"uda: run {run_dir} done: {', '.join(parts) or 'no checkpoint'} in checkpoints/; "
            f"final weights target mIoU {results['mIoU']:.2f} in results.json")
