"""`uda benchmark toy`: every method on the toy benchmark over several seeds.

For each method and seed: `uda train` with <config_dir>/<method>.yaml (default configs/toy),
seed=s, into <out>/<method>/seed<s>; collects the final-weights target mIoU (results.json),
optionally one class's IoU (`class_iou`, e.g. the spurious cue's class "car"), and wall time.
Prints a table (mean +- sample std over seeds) and writes <out>/benchmark.json and
<out>/benchmark.md. The toy data is generated first when absent (with the spurious cue when
`spurious_cue`, bias-conflicting source images with probability `cue_conflicting`).

With `shifts` (toy target-appearance family members, see `datamodules.toy.shift_style`): the
data of shift K lives in <data>/shift<K> (generated when absent, default seed and sizes), runs
go to <out>/shift<K>/<method>/seed<s>; the report has one table per shift and a summary over
shifts (`summarize_shifts`, a pure function of the per-shift rows): mean mIoU per shift, its
mean over shifts, the fraction of the source-only -> oracle gap each method recovers, and on how
many shifts each method beats source-only.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from datamodules.atomic_write import write_json_atomic, write_text_atomic
from uda.config import ConfigError, load_config
from uda.methods import NAMES

METHODS = NAMES  # every method of the table (its toy config: configs/toy/<name>.yaml)
BASELINE, UPPER = "source_only", "oracle"  # the gap recovered is measured between these two
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


def summarize_shifts(per_shift: dict) -> dict:
    """Summary over shifts from {shift: {method: row with "mIoU_mean"}} (partial results allowed).

    Per method (in first-seen order): "mIoU" {shift: mean mIoU}, "mIoU_mean" over the shifts it
    has; when BASELINE is among the methods, every other method gets "beats_source_only" (shifts
    where its mean mIoU > source-only's) of "shifts_compared"; when BASELINE and UPPER both are,
    every method but those two gets "gap_recovered" {shift: (m - source_only) / (oracle -
    source_only), None where oracle == source_only} and "gap_recovered_mean" (over the defined
    values, None when there are none). Shift keys become strings (JSON).
    """
    methods = list(dict.fromkeys(m for rows in per_shift.values() for m in rows))
    out = {}
    for method in methods:
        miou = {str(k): rows[method]["mIoU_mean"] for k, rows in per_shift.items() if method in rows}
        r = out[method] = {"mIoU": miou, "mIoU_mean": statistics.fmean(miou.values())}
        if method == BASELINE or BASELINE not in methods:
            continue
        pairs = {str(k): (rows[method]["mIoU_mean"], rows[BASELINE]["mIoU_mean"], rows.get(UPPER))
                 for k, rows in per_shift.items() if method in rows and BASELINE in rows}
        r["beats_source_only"] = sum(m > so for m, so, _ in pairs.values())
        r["shifts_compared"] = len(pairs)
        if method == UPPER or UPPER not in methods:
            continue
        gaps = {k: None if up["mIoU_mean"] == so else (m - so) / (up["mIoU_mean"] - so)
                for k, (m, so, up) in pairs.items() if up is not None}
        defined = [g for g in gaps.values() if g is not None]
        r["gap_recovered"] = gaps
        r["gap_recovered_mean"] = statistics.fmean(defined) if defined else None
    return {"shifts": [str(k) for k in per_shift], "methods": out}


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_shift_summary(summary: dict) -> str:
    """Markdown table of `summarize_shifts`' result plus one 'beats source-only' line per method."""
    shifts, rows = summary["shifts"], summary["methods"]
    gap = any("gap_recovered" in r for r in rows.values())
    head = ["method", *(f"shift {k} mIoU" for k in shifts), "mean mIoU over shifts"]
    if gap:
        head += [*(f"shift {k} gap recovered" for k in shifts), "mean gap recovered over shifts"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, r in rows.items():
        cells = [method, *(_num(r["mIoU"].get(k), ".1f") for k in shifts), _num(r["mIoU_mean"], ".1f")]
        if gap:
            g = r.get("gap_recovered", {})
            cells += [*(_num(g.get(k), ".2f") for k in shifts), _num(r.get("gap_recovered_mean"), ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    beats = [f"- {m} beats source-only on {r['beats_source_only']} of {r['shifts_compared']} shifts"
             for m, r in rows.items() if "beats_source_only" in r]
    return "\n".join(lines + ([""] + beats if beats else []))


def format_shift_report(per_shift: dict, summary: dict, class_iou: str | None = None) -> str:
    parts = [f"# Toy benchmark over shifts {', '.join(summary['shifts'])}", "",
             "Target-val mIoU of the final weights, mean over seeds; gap recovered = "
             "(method - source-only) / (oracle - source-only).", "", "## Summary", "",
             format_shift_summary(summary)]
    for k, rows in per_shift.items():
        parts += ["", f"## Shift {k}", "", format_benchmark(rows, class_iou)]
    return "\n".join(parts)


def _config(method: str, config_dir) -> Path:
    config = Path(config_dir) / f"{method}.yaml"
    if not config.is_file():
        from uda.config import ConfigError
        known = ", ".join(sorted(p.stem for p in Path(config_dir).glob("*.yaml") if p.stem != "base"))
        raise ConfigError(f"--methods: no toy config for method '{method}' ({config} not found); "
                          f"methods in {config_dir}: {known or 'none'}")
    return config


def _finished_run(run_dir: Path) -> tuple[dict | None, float]:
    """(results, wall seconds) of a run this benchmark finished earlier in run_dir, or (None, 0):
    an interrupted benchmark re-run with the same --out resumes where it stopped."""
    res, timing = run_dir / "results.json", run_dir / "benchmark_run.json"
    if not (res.is_file() and timing.is_file()):
        return None, 0.0
    return json.loads(res.read_text()), float(json.loads(timing.read_text())["wall_s"])


def _run_method(method: str, data_dir: Path, run_root: Path, seeds: int, overrides, config_dir,
                class_iou: str | None, train) -> dict:
    """Train `method` for seeds 0..seeds-1 on data_dir into run_root/<method>/seed<s>; its row."""
    config = _config(method, config_dir)
    results, walls, cls = [], [], []
    for seed in range(seeds):
        cfg = load_config(config, [f"data.source.root={data_dir / 'source'}",
                                   f"data.target.root={data_dir / 'target'}",
                                   f"seed={seed}", f"run.dir={run_root / method / f'seed{seed}'}",
                                   *(overrides or [])])
        res, wall = _finished_run(Path(cfg.run.dir))
        if res is None:  # not finished (a finished run is read back, never trained over)
            start = time.perf_counter()
            res = train(cfg, resume="auto")  # an interrupted run continues from its last.ckpt
            wall = time.perf_counter() - start
            if res.get("interrupted"):
                from uda.train import Interrupted
                raise Interrupted(f"{cfg.run.dir} stopped at iteration {res['step']}; run the "
                                  "same benchmark command again to continue")
            write_json_atomic(Path(cfg.run.dir) / "benchmark_run.json", {"wall_s": wall})
        results.append(res["mIoU"])
        walls.append(wall)
        if class_iou:
            if class_iou not in res["per_class_iou"]:
                raise ValueError(f"--class-iou {class_iou!r} is not a class name "
                                 f"({', '.join(res['per_class_iou'])})")
            cls.append(res["per_class_iou"][class_iou] or 0.0)
    m, s = _mean_std(results)
    row = {"mIoU": results, "mIoU_mean": m, "mIoU_std": s,
           "wall_s": walls, "wall_s_mean": statistics.fmean(walls)}
    if class_iou:
        cm, cs = _mean_std(cls)
        row.update({"class": class_iou, "class_iou": cls, "class_iou_mean": cm, "class_iou_std": cs})
    return row


def _check_shifts(shifts) -> list[int]:
    shifts = list(shifts)
    if not shifts or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in shifts) \
            or len(set(shifts)) != len(shifts):
        raise ConfigError(f"--shifts: expected distinct integers >= 0, got {shifts}")
    return shifts


def _shift_data(data_dir: Path, shift: int, make_toy, **toy) -> Path:
    """<data_dir>/shift<K>, generated (default seed and sizes) when absent; refuses another shift's data."""
    root = data_dir / f"shift{shift}"
    meta = root / "toy_meta.json"
    if not meta.is_file():
        make_toy(root, shift=shift, **toy)
    elif (found := json.loads(meta.read_text()).get("shift")) != shift:
        from datamodules.image_io import DatasetError
        raise DatasetError(f"{root}: holds the toy data of shift {found}, not {shift}; remove it "
                           "or choose another --data")
    return root


def benchmark_toy(seeds: int = 3, methods=METHODS, data: str = "data/toy",
                  out: str = "runs/benchmark_toy", overrides: list[str] | None = None,
                  config_dir: str | Path = CONFIG_DIR, class_iou: str | None = None,
                  spurious_cue: bool = False, cue_conflicting: float = 0.0,
                  shifts: list[int] | None = None) -> dict:
    """Without `shifts`: {method: row}. With: {"shifts": {K: {method: row}}, "summary": ...}."""
    from datamodules.toy import make_toy
    from uda.train import train
    data_dir, out_dir = Path(data), Path(out)
    for method in methods:  # fail before any training, not after hours of it
        _config(method, config_dir)
    if shifts is not None:
        return _benchmark_shifts(_check_shifts(shifts), seeds, methods, data_dir, out_dir, overrides,
                                 config_dir, class_iou, make_toy, train,
                                 dict(spurious_cue=spurious_cue, cue_conflicting=cue_conflicting))
    if not (data_dir / "toy_meta.json").is_file():
        make_toy(data_dir, spurious_cue=spurious_cue, cue_conflicting=cue_conflicting)
    rows: dict = {}
    for method in methods:
        rows[method] = _run_method(method, data_dir, out_dir, seeds, overrides, config_dir,
                                   class_iou, train)
        write_json_atomic(out_dir / "benchmark.json", rows)  # partial results survive a crash
    table = format_benchmark(rows, class_iou)
    write_text_atomic(out_dir / "benchmark.md", table + "\n")
    print(table)
    return rows


def _benchmark_shifts(shifts, seeds, methods, data_dir, out_dir, overrides, config_dir, class_iou,
                      make_toy, train, toy) -> dict:
    per_shift: dict = {}
    for k in shifts:
        root = _shift_data(data_dir, k, make_toy, **toy)
        rows = per_shift[k] = {}
        for method in methods:
            rows[method] = _run_method(method, root, out_dir / f"shift{k}", seeds, overrides,
                                       config_dir, class_iou, train)
            write_json_atomic(out_dir / "benchmark.json",  # partial results survive a crash
                              {"shifts": {str(s): r for s, r in per_shift.items()},
                               "summary": summarize_shifts(per_shift)})
    summary = summarize_shifts(per_shift)
    report = format_shift_report(per_shift, summary, class_iou)
    write_text_atomic(out_dir / "benchmark.md", report + "\n")
    print(report)
    return {"shifts": {str(s): r for s, r in per_shift.items()}, "summary": summary}
