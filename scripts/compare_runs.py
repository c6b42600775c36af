"""Are two toy benchmark outputs the same training, bit for bit?

For each method and seed folder present in both `uda benchmark toy --out` folders, prints the
target-val mIoU (results.json) and a SHA-256 of every tensor of the final checkpoint's
state_dict (`checkpoints/last.ckpt`, names and raw bytes in name order), then IDENTICAL or
DIFFERENT. Used to check that a refactoring changes no result: run the same benchmark at the
old and the new commit, then

    python scripts/compare_runs.py OLD_OUT NEW_OUT [--methods source_only,adversarial,dranet]

Exit status 1 when any pair differs (or nothing could be compared).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from uda.checkpoint_io import read_checkpoint


def state_digest(ckpt: Path) -> tuple[str, int]:
    """(first 16 hex digits of the SHA-256 of the state_dict, number of tensors)."""
    state = read_checkpoint(ckpt)["state_dict"]
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16], len(state)


def run_figures(run: Path) -> tuple[float, str, int]:
    miou = json.loads((run / "results.json").read_text())["mIoU"]
    return (miou, *state_digest(run / "checkpoints" / "last.ckpt"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--methods", default=None,
                    help="comma-separated (default: every method folder in both)")
    args = ap.parse_args(argv)
    methods = (args.methods.split(",") if args.methods else
               sorted(p.name for p in args.old.iterdir()
                      if p.is_dir() and (args.new / p.name).is_dir()))
    compared, differ = 0, 0
    for method in methods:
        seeds = sorted(p.name for p in (args.old / method).glob("seed*")
                       if (args.new / method / p.name / "results.json").is_file())
        for seed in seeds:
            a = run_figures(args.old / method / seed)
            b = run_figures(args.new / method / seed)
            same = a == b
            compared, differ = compared + 1, differ + (not same)
            print(f"{method} {seed}: mIoU {a[0]!r} / {b[0]!r}; state {a[1]} / {b[1]} "
                  f"({a[2]} tensors): {'IDENTICAL' if same else 'DIFFERENT'}")
    if compared == 0:
        print("nothing to compare: no method/seedN folder with results.json in both")
    return 1 if differ or compared == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
