#!/usr/bin/env python
"""The bookkeeping of scripts/bench_gpu.sh (standard library only): which benchmark items of a
group still lack a result, a row for an item whose process died, a measured s/iter, the
results table (printed and written as CSV) and the training run's summary.

    bench_gpu_report.py missing ROWS.jsonl PRECISION ITEM...     items without a row (one a line)
    bench_gpu_report.py died ROWS.jsonl PRECISION ITEM RC|skipped  append a row: the process
                                                                 exited RC, or never ran the item
    bench_gpu_report.py s-per-iter ROWS.jsonl NAME PRECISION     measured s/iter, or nothing
    bench_gpu_report.py table ROWS.jsonl OUT.csv                 the table (stdout) and its CSV
    bench_gpu_report.py train LOG METRICS.csv ITERATIONS         the training run in a few lines
"""
from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path

COLUMNS = ["name", "method", "precision", "size", "s_per_iter", "images_per_s", "peak_mib",
           "finite", "scale", "iters", "device", "error"]


def rows(path: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed process
            continue
    return out


def item_name(item: str) -> str:
    return Path(item).stem if item.endswith((".yaml", ".yml")) else item


def missing(path: str, precision: str, items: list[str]) -> list[str]:
    done = {r.get("item") for r in rows(path) if r.get("precision") == precision}
    return [i for i in items if i not in done]


def died(path: str, precision: str, item: str, rc: str) -> None:
    if rc == "skipped":
        error = "not run: no time left in the budget"
    else:
        why = "timed out" if rc in ("124", "137") else f"process exited with status {rc}"
        error = f"{why} during this item (see bench.log)"
    row = {"item": item, "name": item_name(item), "method": None, "precision": precision,
           "error": error}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def s_per_iter(path: str, name: str, precision: str) -> str:
    for r in rows(path):
        if r.get("name") == name and r.get("precision") == precision and r.get("s_per_iter"):
            return f"{r['s_per_iter']:.4f}"
    return ""


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(path: str, csv_path: str) -> None:
    rs = rows(path)
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rs:
            w.writerow({k: r.get(k) for k in COLUMNS})
    print(f"{'config':<21} {'precision':<10} {'frames, batch':<27} {'s/iter':>7} {'img/s':>6} "
          f"{'peak MiB':>8} {'finite':>6} {'scale':>6}")
    for r in rs:
        if r.get("error"):
            print(f"{r['name']:<21} {r['precision']:<10} FAILED: {r['error'][:150]}")
            continue
        finite = "yes" if r.get("finite") else "NO:" + ",".join(r.get("nonfinite") or [])
        print(f"{r['name']:<21} {r['precision']:<10} {r['size']:<27} "
              f"{fmt(r['s_per_iter'], '7.3f')} {fmt(r['images_per_s'], '6.1f')} "
              f"{fmt(r['peak_mib'], '8.0f')} {finite:>6} "
              f"{fmt(r.get('scale'), '6.0f')}")
    failed = sum(bool(r.get("error")) for r in rs)
    print(f"{len(rs) - failed} measured, {failed} failed")


def train(log_path: str, metrics_path: str, iterations: int) -> None:
    log = Path(log_path).read_text(errors="replace") if Path(log_path).is_file() else ""
    final = [ln.strip() for ln in log.splitlines() if "mIoU (final weights" in ln]
    print(final[-1] if final else "no final mIoU line (see train.log)")
    # the training bar when it first reaches the last iteration, "200/200 [01:23<00:00, ..."
    # (later refreshes of it include the validation): elapsed / iterations
    bars = re.findall(rf"\b{iterations}/{iterations} \[(?:(\d+):)?(\d+):(\d+)<[^,\]]*,\s*"
                      r"([\d.]+)(it/s|s/it)", log)
    if bars:
        h, m, s, rate, unit = bars[0]
        elapsed = int(h or 0) * 3600 + int(m) * 60 + int(s)
        recent = 1 / float(rate) if unit == "it/s" else float(rate)
        print(f"training: {iterations} iterations in {elapsed} s = {elapsed / iterations:.3f} "
              f"s/iter (mean, warm-up included; validation excluded); last iterations "
              f"{recent:.3f} s/iter (the bar's smoothed rate)")
    else:
        print("training: the progress bar did not reach the last iteration")
    errors = [ln.strip() for ln in log.splitlines() if ln.startswith("uda: error")]
    if errors:
        print(errors[-1][:300])
    if not Path(metrics_path).is_file():
        print("losses: no metrics.csv")
        return
    with open(metrics_path, newline="") as f:
        table_rows = list(csv.DictReader(f))
    bad, values, last = set(), 0, {}
    for r in table_rows:
        for k, v in r.items():
            if k.startswith("train/") and not k.endswith("/lr") and v not in ("", None):
                values += 1
                last[k] = v
                if not math.isfinite(float(v)):
                    bad.add(k)
    if not values:
        print("losses: none logged (the run logs every 5 iterations)")
        return
    verdict = "all finite" if not bad else "NON-FINITE in " + ", ".join(sorted(bad))
    print(f"losses: {values} logged values, {verdict}; last: "
          + ", ".join(f"{k[6:]}={float(v):.3g}" for k, v in sorted(last.items())))


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "missing":
        sys.stdout.write("".join(f"{item}\n" for item in missing(args[0], args[1], args[2:])))
    elif cmd == "died":
        died(args[0], args[1], args[2], args[3])
    elif cmd == "s-per-iter":
        print(s_per_iter(*args))
    elif cmd == "table":
        table(*args)
    elif cmd == "train":
        train(args[0], args[1], int(args[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
