"""`uda benchmark toy`: every method on the toy benchmark over several seeds.

For each method and seed: `uda train` with <config_dir>/<method>.yaml (default configs/toy),
seed=s, into <out>/<method>/seed<s>; collects the final-weights target mIoU (results.json),
optionally one class's IoU (`class_iou`, e.g. the spurious cue's class "car"), and wall time.
Prints a table (mean +- sample std over seeds) and writes <out>/benchmark.json and
<out>/benchmark.md. The toy data is generated first when absent (with the spurious cue when
`spurious_cue`, bias-conflicting source images with probability `cue_conflicting`).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from uda.config import load_config
from uda.io import write_json_atomic, write_text_atomic

METHODS = ("source_only", "adversarial", "dranet", "oracle")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "toy"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_benchmark(rows: dict, class_iou: str | None = None) -> str:
    extra = f" {class_iou} IoU (mean +- std) | per seed |" if class_iou else ""
    lines = [f"| method | target mIoU (mean +- std) | per seed |{extra} wall time / run |",
             "|---|---|---|" + ("---|---|" if class_iou else "") + "---|"]
    for method, r in rows.items():
        seeds = ", ".join(f"{v:.1f}" for v in r["mIoU"])
        cls = ""
        if class_iou:
            per = ", ".join(f"{v:.1f}" for v in r["class_iou"])
            cls = f" {r['class_iou_mean']:.1f} +- {r['class_iou_std']:.1f} | {per} |"
        lines.append(f"| {method} | {r['mIoU_mean']:.1f} +- {r['mIoU_std']:.1f} | {seeds} |{cls} "
                     f"{r['wall_s_mean'] / 60:.1f} min |")
    return "\n".join(lines)


def benchmark_toy(seeds: int = 3, methods=METHODS, data: str = "data/toy",
                  out: str = "runs/benchmark_toy", overrides: list[str] | None = None,
                  config_dir: str | Path = CONFIG_DIR, class_iou: str | None = None,
                  spurious_cue: bool = False, cue_conflicting: float = 0.0) -> dict:
    from datamodules.toy import make_toy
    from uda.train import train
    data_dir, out_dir = Path(data), Path(out)
    if not (data_dir / "toy_meta.json").is_file():
        make_toy(data_dir, spurious_cue=spurious_cue, cue_conflicting=cue_conflicting)
    rows: dict = {}
    for method in methods:
        config = Path(config_dir) / f"{method}.yaml"
        if not config.is_file():
            raise FileNotFoundError(f"{config}: no toy config for method '{method}'")
        results, walls, cls = [], [], []
        for seed in range(seeds):
            cfg = load_config(config, [f"data.source.root={data_dir / 'source'}",
                                       f"data.target.root={data_dir / 'target'}",
                                       f"seed={seed}", f"run.dir={out_dir / method / f'seed{seed}'}",
                                       *(overrides or [])])
            start = time.perf_counter()
            res = train(cfg)
            results.append(res["mIoU"])
            walls.append(time.perf_counter() - start)
            if class_iou:
                if class_iou not in res["per_class_iou"]:
                    raise ValueError(f"--class-iou {class_iou!r} is not a class name "
                                     f"({', '.join(res['per_class_iou'])})")
                cls.append(res["per_class_iou"][class_iou] or 0.0)
        m, s = _mean_std(results)
        rows[method] = {"mIoU": results, "mIoU_mean": m, "mIoU_std": s,
                        "wall_s": walls, "wall_s_mean": statistics.fmean(walls)}
        if class_iou:
            cm, cs = _mean_std(cls)
            rows[method].update({"class": class_iou, "class_iou": cls, "class_iou_mean": cm,
                                 "class_iou_std": cs})
        write_json_atomic(out_dir / "benchmark.json", rows)  # partial results survive a crash
    table = format_benchmark(rows, class_iou)
    write_text_atomic(out_dir / "benchmark.md", table + "\n")
    print(table)
    return rows
