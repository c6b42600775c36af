#!/usr/bin/env python
"""Per-iteration training time and peak memory of each method, on synthetic batches.

Sizes: `toy` (the configs/toy settings: crops and batch from the config) and `real`
(configs/gta5_cityscapes networks and settings, 512x1024 frames, batch 2 source + 2 target).
`--configs` benchmarks YAML files as they are configured: each domain's frames at the config's
crop (or its resize where it has no crop, e.g. the whole frames of the *_official.yaml configs),
its batch. The recipe runs for real (Lightning Trainer, all optimizer steps); only the data are
random tensors of the right shapes, so no dataset is needed. Real sizes and configs use random
weights: BatchNorm statistics are not frozen (frozen random statistics do not normalise) and a
DRANet VGG19 gets random weights (same cost). Time per iteration is the median after
`--warmup` iterations; images/s counts source + target images. Peak memory: CUDA max allocated
on GPU; process max RSS on CPU (includes everything Python). `finite`: every logged loss of
every iteration was finite; with 16-mixed, `scale` is the GradScaler's final loss scale (it
starts at 65536 and halves at each step skipped for inf/NaN gradients). 16-mixed on CPU runs
fp16 autocast with a CPU GradScaler (Lightning itself would switch CPU runs to bf16).

    python scripts/bench_methods.py --size toy --iters 10
    python scripts/bench_methods.py --size real --iters 3 --warmup 1 --methods source_only,dranet
    python scripts/bench_methods.py --size real --accelerator gpu --precision bf16-mixed
    python scripts/bench_methods.py --methods "" --configs configs/gta5_cityscapes/dacs_official.yaml
    python scripts/bench_methods.py --size real --keep-going --jsonl out.jsonl   # a failing item
        (error, CUDA out of memory) is recorded and the next one runs
"""
from __future__ import annotations

import argparse
import atexit
import functools
import gc
import json
import math
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.datamodule import UDADataModule  # noqa: E402
from uda import build  # noqa: E402
from uda.config import ConfigError, load_config  # noqa: E402


class RandomFrames(Dataset):
    def __init__(self, n: int, size: tuple[int, int], labelled: bool, classes: int = 19):
        self.n, self.size, self.labelled, self.classes = n, size, labelled, classes

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        i, seed = index if isinstance(index, tuple) else (index, 0)
        g = torch.Generator().manual_seed(int(seed) % 2**31)
        item = {"image": torch.randn(3, *self.size, generator=g), "name": str(i)}
        if self.labelled:
            item["mask"] = torch.randint(0, self.classes, self.size, generator=g)
        return item


class IterTimer(pl.Callback):
    """Wall time of each training iteration (CUDA synchronised) and whether every loss the
    recipe logged was finite (`nonfinite`: the names of those that were not)."""

    def __init__(self):
        self.times: list[float] = []
        self.losses: dict[str, float] = {}
        self.nonfinite: set[str] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)
        for name, value in trainer.callback_metrics.items():
            if name.startswith("train/") and "lr" not in name.split("/")[-1]:
                self.losses[name[len("train/"):]] = v = float(value)
                if not math.isfinite(v):
                    self.nonfinite.add(name[len("train/"):])


def random_layout_means(module) -> None:
    """DRANet's colour transform fits its domain maps to the datasets' mean layouts at fit
    start; benchmarks have no datasets: mean layouts of random frames instead (same cost)."""
    translator = getattr(module, "translator", None)
    if translator is not None and translator.colour is not None:
        size = translator.colour.thumbnail
        thumb = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        module.layout_means = lambda _size: (thumb[0], thumb[1], 1)


def bench_config(path: Path, overrides: list[str]):
    """The config at `path` with data roots that are never read, then `overrides`; a DRANet
    config whose VGG19 has no weights file gets random ones (`random_vgg19_weights`)."""
    base = ["data.source.root=/unused", "data.target.root=/unused"]
    try:
        return load_config(path, [*base, *overrides])
    except ConfigError as e:
        if "perceptual_weights" not in str(e):
            raise
    return load_config(path, [*base, f"method.dranet.perceptual_weights={shared_vgg19_weights()}",
                              *overrides])


def random_vgg19_weights(directory: str | None = None) -> Path:
    """A file of random torchvision vgg19 feature weights (the config refuses vgg19 without a
    weights file; for timing, random weights cost the same), in a new temporary directory
    (under `directory` if given)."""
    w = Path(tempfile.mkdtemp(dir=directory)) / "vgg19.pth"
    import torchvision
    torch.save(torchvision.models.vgg19(weights=None).features.state_dict(), w)
    return w


@functools.lru_cache(maxsize=None)
def shared_vgg19_weights() -> Path:
    """One `random_vgg19_weights` file per process (80 MB), removed when the process exits."""
    w = random_vgg19_weights()
    atexit.register(shutil.rmtree, w.parent, ignore_errors=True)
    return w


def random_datamodule(crop: tuple[int, int], batch: int, target_crop: tuple[int, int] | None = None,
                      debias=None) -> UDADataModule:
    """Random labelled source frames of size `crop`, unlabelled target and labelled val frames
    of size `target_crop` (default: `crop`); `debias`: the config's batch augmentations."""
    target_crop = target_crop or crop
    return UDADataModule(RandomFrames(64, crop, True), RandomFrames(64, target_crop, False),
                         RandomFrames(2, target_crop, True), batch_size=batch, num_workers=0,
                         debias=debias)


def precision_args(accelerator: str, precision: str) -> dict:
    """Trainer arguments for `precision`. 16-mixed on CPU: an explicit fp16 MixedPrecision
    plugin (Lightning would replace 16-mixed by bf16-mixed on CPU), so that fp16 autocast and
    loss scaling with several optimizers run here too."""
    if precision == "16-mixed" and accelerator == "cpu":
        from pytorch_lightning.plugins.precision import MixedPrecision
        return {"plugins": [MixedPrecision("16-mixed", "cpu")]}
    return {"precision": precision}


def bench_trainer(module, iters: int, accelerator: str, precision: str,
                  callbacks: list) -> pl.Trainer:
    """A bare Trainer running `iters` training iterations of `module` (no logging, no val)."""
    return pl.Trainer(max_steps=iters * module.optimizer_steps_per_iteration,
                      accelerator=accelerator, devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0,
                      use_distributed_sampler=False, callbacks=[*callbacks],
                      **precision_args(accelerator, precision))


def config_shapes(cfg) -> tuple[tuple[int, int], tuple[int, int]]:
    """(source, target) frame size of a config's training batches: the crop, else the resize."""
    def shape(t, name):
        size = t.crop or t.resize
        if size is None:
            raise ValueError(f"data.{name}: neither crop nor resize: the frame size is the "
                             "dataset's; give --crop HxW")
        return tuple(int(v) for v in size)
    return (shape(cfg.data.source_transform, "source_transform"),
            shape(cfg.data.target_transform, "target_transform"))


def is_yaml(item: str) -> bool:
    return item.endswith((".yaml", ".yml"))


def item_config(item: str, size: str, overrides: list[str]):
    """(config, name) of a method name (configs/<toy|gta5_cityscapes>/<method>.yaml) or of a
    YAML path (named by its stem). Real sizes and YAML paths run with random weights, whose
    BatchNorm statistics must not be frozen (they would not normalise: NaN loss)."""
    if is_yaml(item):
        path, name = Path(item), Path(item).stem
    else:
        bench_dir = "toy" if size == "toy" else "gta5_cityscapes"
        stem = "source_only" if item == "oracle" else item
        path, name = REPO / "configs" / bench_dir / f"{stem}.yaml", item
    extra = ["model.freeze_bn=false"] if size == "real" or is_yaml(item) else []
    return bench_config(path, [*extra, *overrides]), name


def bench(method: str, size: str, iters: int, warmup: int, accelerator: str, precision: str,
          channels_last: bool, crop: tuple[int, int] | None = None,
          batch: int | None = None, overrides: tuple[str, ...] = ()) -> dict:
    """One timed run of `method` (a method name or a config YAML path); `overrides`: config
    key=value items applied last."""
    free_memory()
    cfg, name = item_config(method, size, [
        f"trainer.max_steps={iters}", f"trainer.precision={precision}",
        f"trainer.channels_last={str(channels_last).lower()}",
        *([f"data.batch_size={batch}"] if batch else []), *overrides])
    src, tgt = (crop, crop) if crop else config_shapes(cfg)
    b = cfg.data.batch_size
    dm = random_datamodule(src, b, tgt, debias=build.build_debias(cfg))
    module = build.build_module(cfg)
    random_layout_means(module)
    timer = IterTimer()
    trainer = bench_trainer(module, iters, accelerator, precision, [timer])
    if accelerator == "gpu":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=dm)
    times = timer.times[warmup:] or timer.times
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    s = statistics.median(times)
    return {"name": name, "method": cfg.method.name, "precision": precision,
            "size": shape_text(src, tgt, b), "s_per_iter": s, "images_per_s": 2 * b / s,
            "iters": len(times), "peak_mib": peak_mib(accelerator),
            "finite": not timer.nonfinite, "nonfinite": sorted(timer.nonfinite),
            "losses": timer.losses, "scale": scaler.get_scale() if scaler is not None else None,
            "error": None}


def shape_text(src, tgt, b: int) -> str:
    frames = f"{src[0]}x{src[1]}" if src == tgt else f"{src[0]}x{src[1]}+{tgt[0]}x{tgt[1]}"
    return f"{frames} batch {b}+{b}"


def peak_mib(accelerator: str) -> float:
    if accelerator == "gpu":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def failed(method: str, precision: str, accelerator: str, e: BaseException) -> dict:
    """The row of an item that raised (CUDA out of memory, a recipe error): its first line."""
    traceback.print_exc()
    first = (str(e).strip().splitlines() or [""])[0][:300]
    row = {"name": Path(method).stem if is_yaml(method) else method,
           "method": None, "precision": precision, "size": None, "s_per_iter": None,
           "images_per_s": None, "iters": 0, "peak_mib": peak_mib(accelerator), "finite": None,
           "nonfinite": [], "losses": {}, "scale": None,
           "error": f"{type(e).__name__}: {first}"}
    free_memory()
    return row


def print_row(r: dict) -> None:
    if r["error"]:
        print(f"{r['name']:<22} {r['precision']:<10} FAILED {r['error']}", flush=True)
        return
    scale = "" if r["scale"] is None else f" {r['scale']:>8.0f}"
    print(f"{r['name']:<22} {r['precision']:<10} {r['size']:<30} {r['s_per_iter']:>8.3f} "
          f"{r['images_per_s']:>7.2f} {r['peak_mib']:>9.0f} {'yes' if r['finite'] else 'NO':>6}"
          f"{scale}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", choices=["toy", "real"], default="toy")
    p.add_argument("--methods", default="source_only,adversarial,dranet",
                   help="method names (configs/<toy|gta5_cityscapes>/<method>.yaml); '' for none")
    p.add_argument("--configs", default="", help="comma-separated YAML paths, benchmarked at "
                   "their own frame sizes and batch (random weights)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--crop", default=None, help="HxW frames of both domains (default: the "
                   "config's crop for toy and --configs, 512x1024 for real)")
    p.add_argument("--batch", type=int, default=None, help="per-domain batch (default: the "
                   "config's; DRANet at 512x1024 batch 2+2 needs > 24 GiB of CPU memory)")
    p.add_argument("--keep-going", action="store_true", help="record a failing item (its "
                   "error's first line) and go on with the next; exit 1 if any failed")
    p.add_argument("--jsonl", default=None, help="append one JSON line per item to this file")
    a = p.parse_args()
    crop = tuple(int(v) for v in a.crop.split("x")) if a.crop else None
    items = [m for m in a.methods.split(",") if m] + [c for c in a.configs.split(",") if c]
    device = (torch.cuda.get_device_name() if a.accelerator == "gpu"
              else f"CPU, {torch.get_num_threads()} threads")
    print(f"# {device}; precision {a.precision}; channels_last {a.channels_last}")
    print(f"{'name':<22} {'precision':<10} {'size':<30} {'s/iter':>8} {'img/s':>7} {'peak MiB':>9} "
          f"{'finite':>6}{' scale' if a.precision == '16-mixed' else ''}  (median of "
          f"{a.iters - a.warmup} iters)")
    failures = 0
    for item in items:
        real_crop = crop or ((512, 1024) if a.size == "real" and not is_yaml(item) else None)
        try:
            r = bench(item, a.size, a.iters, a.warmup, a.accelerator, a.precision,
                      a.channels_last, real_crop, a.batch)
        except Exception as e:  # noqa: BLE001 (CUDA OOM included)
            if not a.keep_going:
                raise
            r = failed(item, a.precision, a.accelerator, e)
        failures += r["error"] is not None
        print_row(r)
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(json.dumps({"item": item, "accelerator": a.accelerator,
                                    "device": device, **r}) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
