#!/usr/bin/env python
"""Measure our DRN-C-26 against fyu/drn's own DRNSeg (a measurement, not a test).

--official is a checkout of github.com/fyu/drn (nothing of it is copied here). Its segment.py
is Python-2 era code (`cuda(async=True)`) that does not import under Python 3, so only the
definitions of `fill_up_weights` and `DRNSeg` are read from it and executed (with its drn.py).
The script builds DRNSeg('drn_c_26', 19), random weights of moderate scale, its fixed bilinear
`up` deconvolution as its code sets it, eval mode; saves the state dict; loads that file into our
DRNC26 through the format detection with upsample=deconv and upsample=bilinear; and compares the
log-probabilities on random inputs (whole image, and without the 4-pixel border).

  python scripts/parity_drn.py --official /path/to/drn [--sizes 128x256 512x1024]
"""
from __future__ import annotations

import argparse
import ast
import math
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from parity_deeplabv2 import randomise  # noqa: E402
from uda.models.drn import DRNC26  # noqa: E402


def official_drnseg(root: Path):
    """(DRNSeg class, fill_up_weights) from the checkout at ``root``, or None."""
    if not (root / "segment.py").is_file() or not (root / "drn.py").is_file():
        return None
    sys.path.insert(0, str(root))
    import drn  # their drn.py
    tree = ast.parse((root / "segment.py").read_text().replace("async=True", "non_blocking=True"))
    wanted = [n for n in tree.body if getattr(n, "name", None) in ("fill_up_weights", "DRNSeg")]
    namespace = {"math": math, "nn": nn, "torch": torch, "drn": drn}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(root / "segment.py"), "exec"),
         namespace)
    return namespace["DRNSeg"], namespace["fill_up_weights"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official", type=Path, required=True, help="fyu/drn checkout")
    p.add_argument("--sizes", nargs="+", default=["128x256", "512x1024"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    found = official_drnseg(args.official)
    if found is None:
        print(f"parity_drn: skipped: no segment.py and drn.py at {args.official} (pass a "
              "checkout of github.com/fyu/drn)")
        return 0
    drnseg, fill_up_weights = found
    official = randomise(drnseg("drn_c_26", 19, pretrained=False), args.seed)
    fill_up_weights(official.up)  # their fixed kernel, which randomise overwrote
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "drn_c_26_random.pth"
        torch.save(official.state_dict(), path)
        ours = {up: DRNC26(19, pretrained=path, upsample=up).eval()
                for up in ("deconv", "bilinear")}
    print(f"fyu/drn ({args.official}): loaded {ours['deconv'].load_report.loaded} tensors "
          f"({ours['deconv'].load_report.format})")
    for i, text in enumerate(args.sizes):
        h, w = (int(v) for v in text.split("x"))
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(args.seed + 1 + i))
        with torch.no_grad():
            theirs, _ = official(x)
            diffs = {up: (torch.log_softmax(net(x), 1) - theirs).abs() for up, net in ours.items()}
        print(f"{h}x{w}: max abs diff of log-probabilities, " + "; ".join(
            f"upsample={up}: {d.max().item():.3g} (without the 4-pixel border "
            f"{d[..., 4:-4, 4:-4].max().item():.3g})" for up, d in diffs.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
