#!/usr/bin/env python
"""Training-loader throughput at full resolution: raw vs prepared files vs PNG decoding alone.

Generates full-size frames in the real layouts (the toy generator: GTA5 1914x1052, Cityscapes
2048x1024, SYNTHIA 1280x760 with 16-bit labels), prepares them at the scales of the real
configs (`uda data prepare`: GTA5 720x1280, SYNTHIA 760x1280, Cityscapes 512x1024) and times,
per image, in one process (= one DataLoader worker) with one thread:
  decode    reading the original PNGs alone (image + raw label; the target split: image only)
  raw       the dataset item with the config's training transform, from the original files
  prepared  the same item from the prepared files (identical tensors)
then the items/s of a DataLoader (batch 2) with each --workers count (raw and prepared), and
the arithmetic of each real config: one worker's seconds per training step (t from the 1-worker
DataLoader: collation and transfer included),
B x (t_source + t_target), and the workers that feed a GPU step of T seconds,
ceil(B x (t_source + t_target) / T). With --real DIR, the real Cityscapes frames of DIR
(../shared/real_samples/cityscapes) are timed as well (real image entropy).

  python scripts/bench_loader.py --frames 8 --workers 1,2
  python scripts/bench_loader.py --frames 64 --workers 1,4,8 --data /scratch/bench_loader --keep
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.datasets import DATASETS  # noqa: E402
from datamodules.image_io import read_rgb  # noqa: E402
from datamodules.labels import CITYSCAPES_ID_TO_TRAINID, SYNTHIA_TO_TRAINID_PAIRS  # noqa: E402
from datamodules.prepare import prepare_dataset  # noqa: E402
from datamodules.toy import make_toy  # noqa: E402
from datamodules.transforms import transform_from_config  # noqa: E402
from uda.config import load_config  # noqa: E402

REAL = REPO.parent / "shared" / "real_samples" / "cityscapes"
# name -> (dataset, full size (h, w), config, transform key, labelled as in training)
SETS = {"gta5": ("gta5", (1052, 1914), "gta5_cityscapes/base.yaml", "source_transform", True),
        "synthia": ("synthia", (760, 1280), "synthia_cityscapes/base.yaml", "source_transform",
                    True),
        "cityscapes": ("cityscapes", (1024, 2048), "gta5_cityscapes/base.yaml", "target_transform",
                       False)}
# real config -> its source set (the target: cityscapes)
CONFIGS = {"gta5_cityscapes/base.yaml": "gta5", "synthia_cityscapes/base.yaml": "synthia",
           "gta5_cityscapes/dacs_official.yaml": "gta5",
           "gta5_cityscapes/adaptsegnet_official.yaml": "gta5"}


def generate(data: Path, name: str, n: int) -> Path:
    """`n` full-size frames of set `name` under data/name (kept when already there)."""
    dataset, (h, w), *_ = SETS[name]
    root = data / name
    if (root / "done").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    toy = data / f"{name}_toy"
    make_toy(toy, num_source=0 if name == "cityscapes" else n,
             num_target_train=n if name == "cityscapes" else 0, num_target_val=0, height=h,
             width=w)
    if name == "cityscapes":
        shutil.move(str(toy / "target"), root)
    elif name == "gta5":
        shutil.move(str(toy / "source"), root)
    else:
        to_synthia(toy / "source", root)
    shutil.rmtree(toy)
    (root / "done").touch()
    return root


def to_synthia(source: Path, root: Path) -> None:
    """A GTA5-layout toy set rewritten in the SYNTHIA layout: RGB/, GT/LABELS/ 16-bit BGR
    PNGs with the SYNTHIA class id in the first (R) channel, an instance id in the second."""
    to_synthia_id = np.zeros(256, np.uint16)
    for sid, tid in SYNTHIA_TO_TRAINID_PAIRS.items():
        to_synthia_id[tid] = sid
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    for i, image in enumerate(sorted((source / "images").glob("*.png"))):
        shutil.copy(image, root / "RGB" / f"{i:07d}.png")
        with Image.open(source / "labels" / image.name) as im:
            ids = to_synthia_id[CITYSCAPES_ID_TO_TRAINID[np.asarray(im)]]
        bgr = np.stack([np.zeros_like(ids), np.full_like(ids, 7), ids], -1)
        cv2.imwrite(str(root / "GT" / "LABELS" / f"{i:07d}.png"), bgr)


def transform_of(name: str):
    _, _, config, key, _ = SETS[name]
    cfg = load_config(REPO / "configs" / config, [
        "data.source.root=/unused", "data.target.root=/unused", "model.freeze_bn=false"])
    return transform_from_config(getattr(cfg.data, key), train=True), getattr(cfg.data, key).resize


def per_image(fn, n: int, repeats: int) -> float:
    """Median over `repeats` passes of the mean seconds of fn(i), i < n."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        times.append((time.perf_counter() - t) / n)
    return statistics.median(times)


def loader_rate(ds, workers: int, passes: int) -> float:
    """Items/s of a DataLoader (batch 2) over `passes` passes, the first batch not counted."""
    from torch.utils.data import DataLoader
    idx = [(i % len(ds), i) for i in range(len(ds) * passes)]
    loader = DataLoader(ds, batch_size=2, sampler=idx, num_workers=workers,
                        worker_init_fn=lambda _: torch.set_num_threads(1))
    it = iter(loader)
    next(it)
    t, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch["name"])
    return n / (time.perf_counter() - t)


def measure(name: str, root: Path, out: Path, split: str, args) -> dict:
    key = name if name in SETS else "cityscapes"  # real_cs: timed as the target
    dataset, _, _, _, labelled = SETS[key]
    transform, resize = transform_of(key)
    t = time.perf_counter()
    summary = prepare_dataset(dataset, root, split, out=out, sizes=[resize], workers=1)
    prep_s = (time.perf_counter() - t) / summary["prepared"] if summary["prepared"] else math.nan
    cls = DATASETS[dataset]
    raw = cls(root, split, transform=transform, labelled=labelled, prepared=False)
    ready = cls(root, split, transform=transform, labelled=labelled, prepared=out)
    n = len(raw)

    def decode(i):
        s = raw.samples[i]
        read_rgb(s.image)
        if labelled:
            raw.read_raw_label(s.label)
    row = {"name": name, "n": n, "prepare_s": prep_s,
           "mb": statistics.mean(s.image.stat().st_size for s in raw.samples) / 1e6,
           "decode": per_image(decode, n, args.repeats),
           "raw": per_image(lambda i: raw[(i, i)], n, args.repeats),
           "prepared": per_image(lambda i: ready[(i, i)], n, args.repeats)}
    for i in range(n):  # the two give the same tensors
        a, b = raw[(i, 7)], ready[(i, 7)]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a.get("mask", a["image"]),
                                                                    b.get("mask", b["image"]))
    passes = max(args.passes, math.ceil(16 / n))  # at least 16 items per measurement
    for k in args.workers:
        row[f"raw_w{k}"] = loader_rate(raw, k, passes)
        row[f"prepared_w{k}"] = loader_rate(ready, k, passes)
    return row


def print_rows(rows: list[dict], workers: list[int]) -> None:
    print(f"\n{'set':<12}{'n':>3}{'MB/img':>8}{'decode ms':>11}{'raw ms':>9}{'prep ms':>9}"
          f"{'prep/decode':>12}{'raw img/s':>10}{'prep img/s':>11}{'prepare s/img':>14}"
          + "".join(f"{f'loader w={k} raw/prep img/s':>28}" for k in workers))
    for r in rows:
        print(f"{r['name']:<12}{r['n']:>3}{r['mb']:>8.2f}{1e3 * r['decode']:>11.1f}"
              f"{1e3 * r['raw']:>9.1f}{1e3 * r['prepared']:>9.1f}"
              f"{r['prepared'] / r['decode']:>12.2f}{1 / r['raw']:>10.1f}{1 / r['prepared']:>11.1f}"
              f"{r['prepare_s']:>14.2f}"
              + "".join(f"{r[f'raw_w{k}']:>19.1f} / {r[f'prepared_w{k}']:<6.1f}" for k in workers))


def worker_seconds(row: dict, kind: str) -> float:
    """One worker's seconds per item: from the 1-worker DataLoader (collation and transfer
    included) when measured, else in-process."""
    rate = row.get(f"{kind}_w1")
    return 1.0 / rate if rate else row[kind]


def print_arithmetic(rows: dict, step_times: list[float]) -> None:
    print("\nworkers to feed one GPU step: ceil(B x (t_source + t_target) / T), t = one worker's "
          "seconds per item (1-worker DataLoader above, with the base configs' transforms), "
          "raw -> prepared")
    print(f"{'config':<42}{'B':>2}{'worker s/step':>17}"
          + "".join(f"{f'T={t:g} s':>12}" for t in step_times) + "   its num_workers feed T >=")
    for config, source in CONFIGS.items():
        cfg = load_config(REPO / "configs" / config, [
            "data.source.root=/unused", "data.target.root=/unused", "model.freeze_bn=false"])
        b, workers = cfg.data.batch_size, cfg.data.num_workers
        cost = {k: b * (worker_seconds(rows[source], k) + worker_seconds(rows["cityscapes"], k))
                for k in ("raw", "prepared")}
        need = "".join(f"{math.ceil(cost['raw'] / t):>6} -> {math.ceil(cost['prepared'] / t):<3}"
                       for t in step_times)
        print(f"{config:<42}{b:>2}{cost['raw']:>9.3f} -> {cost['prepared']:<5.3f}{need}"
              f"   {cost['raw'] / workers:.3f} -> {cost['prepared'] / workers:.3f} s "
              f"({workers} workers)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--frames", type=int, default=8, help="full-size frames per set")
    p.add_argument("--workers", default="1,2", help="DataLoader worker counts")
    p.add_argument("--repeats", type=int, default=3, help="timed passes (median)")
    p.add_argument("--passes", type=int, default=2, help="passes per DataLoader measurement")
    p.add_argument("--step-times", default="0.25,0.5,1", help="GPU step times T (s) to feed")
    p.add_argument("--data", default=None, help="where the frames go (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep --data (reused next time)")
    p.add_argument("--real", default=str(REAL) if REAL.is_dir() else None,
                   help="a Cityscapes root whose train frames are timed too")
    args = p.parse_args()
    args.workers = [int(k) for k in args.workers.split(",")]
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    data = Path(args.data or tempfile.mkdtemp(prefix="bench_loader_"))
    print(f"# {os.cpu_count()} CPUs, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
          f"; 1 thread per process; {args.frames} frames per set in {data}", flush=True)
    rows = {}
    try:
        for name in SETS:
            root = generate(data, name, args.frames)
            rows[name] = measure(name, root, data / f"{name}_prepared", "train", args)
            print(f"# {name}: measured", flush=True)
        if args.real:
            rows["real_cs"] = measure("real_cs", Path(args.real), data / "real_cs_prepared",
                                      "train", args)
        print_rows(list(rows.values()), args.workers)
        print_arithmetic(rows, [float(t) for t in args.step_times.split(",")])
        print(f"# load average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    finally:
        if not args.keep and args.data is None:
            shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
