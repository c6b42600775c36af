#!/usr/bin/env python
"""Per-iteration training time and peak memory of each method, on synthetic batches.

Sizes: `toy` (the configs/toy settings: crops and batch from the config) and `real`
(configs/gta5_cityscapes networks and settings, 512x1024 frames, batch 2 source + 2 target).
The recipe runs for real (Lightning Trainer, all optimizer steps); only the data are random
tensors of the right shapes, so no dataset is needed. Time per iteration is the median after `--warmup` iterations.
Peak memory: CUDA max allocated on GPU; process max RSS on CPU (includes everything Python).

    python scripts/bench_methods.py --size toy --iters 10
    python scripts/bench_methods.py --size real --iters 3 --warmup 1 --methods source_only,dranet
    python scripts/bench_methods.py --size real --accelerator gpu --precision bf16-mixed
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.datamodule import UDADataModule  # noqa: E402
from uda import build  # noqa: E402
from uda.config import load_config  # noqa: E402


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
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)


def random_layout_means(module) -> None:
    """DRANet's colour transform fits its domain maps to the datasets' mean layouts at fit
    start; benchmarks have no datasets: mean layouts of random frames instead (same cost)."""
    translator = getattr(module, "translator", None)
    if translator is not None and translator.colour is not None:
        size = translator.colour.thumbnail
        thumb = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        module.layout_means = lambda _size: (thumb[0], thumb[1], 1)


def bench_config(path: Path, overrides: list[str]):
    """The config at `path` with data roots that are never read, then `overrides`."""
    return load_config(path, ["data.source.root=/unused", "data.target.root=/unused", *overrides])


def random_vgg19_weights(directory: str | None = None) -> Path:
    """A file of random torchvision vgg19 feature weights (the config refuses vgg19 without a
    weights file; for timing, random weights cost the same), in a new temporary directory
    (under `directory` if given)."""
    w = Path(tempfile.mkdtemp(dir=directory)) / "vgg19.pth"
    import torchvision
    torch.save(torchvision.models.vgg19(weights=None).features.state_dict(), w)
    return w


def random_datamodule(crop: tuple[int, int], batch: int) -> UDADataModule:
    """Random labelled source, unlabelled target and labelled val frames of size `crop`."""
    return UDADataModule(RandomFrames(64, crop, True), RandomFrames(64, crop, False),
                         RandomFrames(2, crop, True), batch_size=batch, num_workers=0)


def bench_trainer(module, iters: int, accelerator: str, precision: str,
                  callbacks: list) -> pl.Trainer:
    """A bare Trainer running `iters` training iterations of `module` (no logging, no val)."""
    return pl.Trainer(max_steps=iters * module.optimizer_steps_per_iteration,
                      accelerator=accelerator, devices=1, precision=precision, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0,
                      use_distributed_sampler=False, callbacks=callbacks)


def bench(method: str, size: str, iters: int, warmup: int, accelerator: str, precision: str,
          channels_last: bool, crop: tuple[int, int] | None = None,
          batch: int | None = None) -> dict:
    bench_dir = "toy" if size == "toy" else "gta5_cityscapes"
    extra = []
    if method == "dranet" and size == "real":  # random VGG weights: timing only
        extra.append(f"method.dranet.perceptual_weights={random_vgg19_weights()}")
    if method == "adversarial" and size == "real":
        extra += ["model.multi_level=true"]
    if size == "real":  # random weights: frozen BN statistics would not normalise (NaN loss)
        extra += ["model.freeze_bn=false"]
    cfg = bench_config(REPO / "configs" / bench_dir / f"{method if method != 'oracle' else 'source_only'}.yaml",
                       [f"trainer.max_steps={iters}", f"trainer.precision={precision}",
                        f"trainer.channels_last={str(channels_last).lower()}", *extra,
                        *([f"data.batch_size={batch}"] if batch else [])])
    crop = crop or tuple(cfg.data.source_transform.crop)
    b = cfg.data.batch_size
    dm = random_datamodule(crop, b)
    module = build.build_module(cfg)
    random_layout_means(module)
    timer = IterTimer()
    trainer = bench_trainer(module, iters, accelerator, precision, [timer])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=dm)
    times = timer.times[warmup:] or timer.times
    peak = (torch.cuda.max_memory_allocated() / 2**20 if accelerator == "gpu"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"method": method, "size": f"{crop[0]}x{crop[1]} batch {b}+{b}",
            "s_per_iter": statistics.median(times), "iters": len(times), "peak_mib": peak}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", choices=["toy", "real"], default="toy")
    p.add_argument("--methods", default="source_only,adversarial,dranet")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--crop", default=None, help="HxW frames (default: the config's crop for "
                   "toy, 512x1024 for real)")
    p.add_argument("--batch", type=int, default=None, help="per-domain batch (default: the "
                   "config's; DRANet at 512x1024 batch 2+2 needs > 24 GiB of CPU memory)")
    a = p.parse_args()
    crop = tuple(int(v) for v in a.crop.split("x")) if a.crop else (
        (512, 1024) if a.size == "real" else None)
    device = torch.cuda.get_device_name() if a.accelerator == "gpu" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {device}; precision {a.precision}; channels_last {a.channels_last}")
    print(f"{'method':<12} {'size':<24} {'s/iter':>8} {'peak MiB':>9}  (median of {a.iters - a.warmup} iters)")
    for method in a.methods.split(","):
        r = bench(method, a.size, a.iters, a.warmup, a.accelerator, a.precision, a.channels_last,
                  crop, a.batch)
        print(f"{r['method']:<12} {r['size']:<24} {r['s_per_iter']:>8.3f} {r['peak_mib']:>9.0f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
