#!/usr/bin/env python
"""Benchmark `evaluate_pred_dir` against the bare cost of decoding the PNGs it must read.

Builds a prediction folder (relabelled copies of the GT labelIds) in a temp dir, then times
  (a) decoding every GT + prediction PNG with PIL (nothing else), and
  (b) the full `evaluate_pred_dir` (matching, header checks, decoding, confusion, scores),
each with 1 worker and with N workers (same thread count for both, so the ratio is fair), and
prints images/s and the ratio eval/decoding (target <= 1.5).

  python scripts/bench_eval.py                       # the 15 real val labels in ../shared
  python scripts/bench_eval.py --gt-root /data/cityscapes --max-images 100 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uda.evaluation.pred_dir import GT_SUFFIX, _default_workers, evaluate_pred_dir  # noqa: E402

DEFAULT_GT_ROOT = ROOT.parent / "shared" / "real_samples" / "cityscapes"


def relabel(lab: np.ndarray, seed: int) -> np.ndarray:
    """A plausible 'prediction': GT ids with relabelled regions (road box, car band, noise)."""
    rng = np.random.default_rng(seed)
    p = lab.copy()
    h, w = p.shape
    p[p == 24] = 25
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    p[y:y + h // 4, x:x + w // 4] = 7
    y = rng.integers(h // 3, h - h // 20)
    p[y:y + h // 20, :] = 26
    p[rng.random(p.shape) < 0.02] = 0
    return p


def decode(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def decode_all(paths: list[Path], workers: int) -> None:
    if workers == 1:
        for p in paths:
            decode(p)
    else:
        with ThreadPoolExecutor(workers) as ex:
            for _ in ex.map(decode, paths):
                pass


def timed_pair(fn_a, fn_b, repeats: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Median (wall, cpu) seconds of fn_a and fn_b, run alternately so load drift hits both."""
    fn_a(), fn_b()  # warm-up (file cache, imports, thread start-up)
    walls = ([], [])
    cpus = ([], [])
    for _ in range(repeats):
        for i, fn in enumerate((fn_a, fn_b)):
            c, t = time.process_time(), time.perf_counter()
            fn()
            walls[i].append(time.perf_counter() - t)
            cpus[i].append(time.process_time() - c)
    med = statistics.median
    return (med(walls[0]), med(cpus[0])), (med(walls[1]), med(cpus[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gt-root", type=Path, default=DEFAULT_GT_ROOT,
                    help="Cityscapes root with gtFine/<split>/<city>/*_gtFine_labelIds.png")
    ap.add_argument("--split", default="val")
    ap.add_argument("--max-images", type=int, default=0, help="use only the first N GT files (0: all)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=None, help=f"default: {_default_workers()}")
    a = ap.parse_args()

    gts = sorted((a.gt_root / "gtFine" / a.split).glob(f"*/*{GT_SUFFIX}"))
    if a.max_images:
        gts = gts[:a.max_images]
    if not gts:
        print(f"no *{GT_SUFFIX} under {a.gt_root}/gtFine/{a.split}", file=sys.stderr)
        return 2
    workers = a.workers or _default_workers()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gt_root = tmp / "gt"
        pred_dir = tmp / "pred"
        for i, gt in enumerate(gts):   # GT subset as symlinks, predictions as relabelled copies
            link = gt_root / "gtFine" / a.split / gt.parent.name / gt.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(gt.resolve())
            key = gt.name[:-len(GT_SUFFIX)]
            out = pred_dir / gt.parent.name / f"{key}_leftImg8bit.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(relabel(decode(gt), i)).save(out)
        preds = sorted(pred_dir.rglob("*.png"))
        files = list(gts) + preds
        n = len(gts)
        h, w = decode(gts[0]).shape
        print(f"{n} images ({w}x{h}) from {a.gt_root}/gtFine/{a.split}; median of {a.repeats} "
              f"runs; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, cpus={os.cpu_count()}")
        rows = []
        for nw in sorted({1, workers}):
            dec, ev = timed_pair(lambda: decode_all(files, nw),
                                 lambda: evaluate_pred_dir(pred_dir, gt_root, a.split, num_workers=nw),
                                 a.repeats)
            rows.append((nw, dec, ev))
        res = evaluate_pred_dir(pred_dir, gt_root, a.split, num_workers=workers)

    print(f"{'workers':>7} | {'decode GT+pred (PIL)':>28} | {'evaluate_pred_dir':>28} | "
          "ratio eval/decode (wall, cpu)")
    for nw, (d_wall, d_cpu), (e_wall, e_cpu) in rows:
        print(f"{nw:>7} | {n / d_wall:7.1f} img/s {1000 * d_wall / n:5.1f} ms "
              f"(cpu {1000 * d_cpu / n:5.1f}) | {n / e_wall:7.1f} img/s {1000 * e_wall / n:5.1f} ms "
              f"(cpu {1000 * e_cpu / n:5.1f}) | {e_wall / d_wall:5.2f}, {e_cpu / d_cpu:5.2f}")
    print("ms = per image pair (one GT + one prediction PNG); cpu = process CPU time (all threads)")
    print(f"sanity: mIoU of the relabelled predictions = {res['mIoU']:.2f} ({res['num_images']} images)")
    worst = max(ev[0] / dec[0] for _, dec, ev in rows)
    print(f"worst wall ratio {worst:.2f}: " + ("OK (target <= 1.5)" if worst <= 1.5 else
                                                "ABOVE TARGET 1.5 (noisy machine? rerun)"))
    return 0 if worst <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
