#!/usr/bin/env python
"""Coloured-digits benchmark: LfF's Colored-MNIST protocol on scikit-learn's 8x8 digits.

Data (per seed): the 1797 digits of `sklearn.datasets.load_digits` (bundled, offline), split
2/3 train and 1/3 test, stratified by digit. Each image (upsampled to --size, bilinear) gets its
strokes coloured as LfF does: intensity * clamp(colour + N(0, --color-std) per channel and
image, 0, 1) (LfF's severity 4 is std 0.005). Training set: per class, a fraction
(1 - conflict ratio) of its images are *bias-aligned* (the colour of their digit, one of 10
fixed colours) and the rest *bias-conflicting*, spread evenly over the 9 other colours (LfF's
`make_attr_labels`). Test set: UNBIASED (each class spread evenly over the 10 colours), so a
model that reads the colour instead of the shape scores about 10 % on its conflicting part.

Methods (same MLP and optimiser, trained from scratch, final weights evaluated: no selection
on the test set):
  vanilla   cross-entropy;
  lff       Learning from Failure: a biased MLP trained with GCE (q) and the debiased MLP with
            CE weighted by W = CE_b / (CE_b + CE_d) (per-sample loss EMAs, per-class max
            normalisation; `uda.losses.lff.LfFWeights`);
  selecmix  "SelecMix + LfF" (as the SelecMix code runs it): the LfF losses above plus
            --mix-weight (0.1) * CE of the debiased model on mixed images. Each sample is mixed
            with a contradicting partner chosen with the biased MLP's penultimate features
            (`datamodules.debias.selecmix`, pool = the whole shuffled training set, features
            at the start of the epoch): x = lam x_anchor + (1 - lam) x_partner with
            lam = 0.5 * Beta(1, 1) (the partner dominates) and the partner's label
            (--mix-label partner; "mix" is the lam-weighted mixup target instead).
Reported: unbiased test accuracy (%) of the debiased model, mean (and std, ddof 0) over seeds.

Hyper-parameters (defaults): LfF's Colored-MNIST settings -- MLP 3 x 100 hidden, Adam lr 1e-3,
no weight decay, batch 256, 100 epochs, GCE q 0.7, loss EMA 0.7, colour std 0.005 -- on 16x16
images, and the SelecMix code's mix settings (weight 0.1, lam_max 0.5, partner label,
Beta(1, 1)). Development runs used seeds 100-103 only (--seed-offset 100) at 5 %: there, batch
128 with colour std 0.05 gave LfF about +8.5 and the mixup-style SelecMix target (--mix-label
mix --mix-lam-max 1 --mix-weight 1) no gain over LfF; the settings above were then fixed and
the reported figures come from seeds 0-1, which were not used for any choice.

    python scripts/bench_debias_digits.py --seeds 2 --output debias_digits.json
    python scripts/bench_debias_digits.py --quick --output /tmp/q.json   # seconds, smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.debias import selecmix  # noqa: E402
from uda.losses.lff import LfFWeights, gce_loss  # noqa: E402
from uda.losses.mixed import mixed_loss  # noqa: E402

RATIOS = (0.02, 0.05, 0.10)
METHODS = ("vanilla", "lff", "selecmix")
# 10 well-separated stroke colours (RGB in [0, 1]), one per digit class.
COLORS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0],
                       [1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.5, 0.0], [0.5, 0.0, 1.0],
                       [0.5, 1.0, 0.5], [1.0, 1.0, 1.0]])


# ----------------------------------------------------------------------------- data

def split_digits(seed: int, test_fraction: float = 1 / 3):
    """Stratified split of the 1797 digits -> (train imgs (n,8,8) in [0,1], labels, test ...)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, stratify=y,
                                          random_state=seed)
    return torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte), \
        torch.from_numpy(yte).long()


def colorize(gray: torch.Tensor, color_idx: torch.Tensor, size: int, color_std: float,
             g: torch.Generator) -> torch.Tensor:
    """(n,8,8) intensities + colour ids (n,) -> (n,3,size,size) coloured images in [0, 1]."""
    img = F.interpolate(gray.unsqueeze(1), size=(size, size), mode="bilinear",
                        align_corners=False) if size != gray.shape[-1] else gray.unsqueeze(1)
    col = COLORS[color_idx] + color_std * torch.randn(len(color_idx), 3, generator=g)
    return (img * col.clamp(0, 1).view(-1, 3, 1, 1)).clamp(0, 1)


def color_labels(labels: torch.Tensor, aligned_ratio: float, g: torch.Generator) -> torch.Tensor:
    """Colour id per sample, as LfF's `make_attr_labels`, in a random order within each class.

    Of the n_c samples of class c, round(aligned_ratio * n_c) get colour c and the rest are
    spread as evenly as rounding allows over the 9 other colours (cumulative rounding).
    aligned_ratio 0.1 gives uniformly distributed colours (the unbiased test set).
    """
    colors = torch.empty_like(labels)
    for c in range(10):
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        ratios = np.full(10, (1 - aligned_ratio) / 9)
        ratios[c] = aligned_ratio
        milestones = np.round(len(idx) * np.cumsum(ratios)).astype(int)
        counts = np.diff(np.concatenate([[0], milestones]))
        colors[idx] = torch.from_numpy(np.repeat(np.arange(10), counts)).long()
    return colors


def make_data(seed: int, ratio: float, size: int, color_std: float):
    """Biased train set and unbiased test set; also the conflicting flags of each."""
    xtr, ytr, xte, yte = split_digits(seed)
    g = torch.Generator().manual_seed(10_000 + seed)
    ctr = color_labels(ytr, 1 - ratio, g)
    cte = color_labels(yte, 0.1, g)
    return (colorize(xtr, ctr, size, color_std, g), ytr, ctr != ytr,
            colorize(xte, cte, size, color_std, g), yte, cte != yte)


# ----------------------------------------------------------------------------- model

class MLP(nn.Module):
    """LfF's Colored-MNIST MLP: 3 hidden ReLU layers; `features` is the last hidden layer."""

    def __init__(self, in_dim: int, hidden: int = 100, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_dim, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def ce_none(logits, target):
    return F.cross_entropy(logits, target, reduction="none")


def train(method: str, xtr, ytr, args, seed: int) -> nn.Module:
    """Train with `method` and return the debiased (or vanilla) model."""
    torch.manual_seed(seed)
    in_dim = xtr[0].numel()
    model_d = MLP(in_dim, args.hidden)
    params = list(model_d.parameters())
    model_b = None
    if method in ("lff", "selecmix"):
        model_b = MLP(in_dim, args.hidden)
        params += list(model_b.parameters())
        lff = LfFWeights(len(ytr), 10, ema=args.ema)
    opt = torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    g = torch.Generator().manual_seed(1000 + seed)
    n = len(ytr)
    for _ in range(args.epochs):
        perm = torch.randperm(n, generator=g)
        if method == "selecmix":
            # Pairs are chosen in a pool of the whole (shuffled) training set, with the biased
            # model's features at the start of the epoch (SelecMix's code picks them in a pool
            # of 1024 samples that then feeds 4 mini-batches).
            with torch.no_grad():
                feats = model_b.features(xtr[perm])
            xm_all, ya_all, yb_all, lam_all = selecmix(xtr[perm], ytr[perm], feats,
                                                       args.mix_alpha, g, lam_max=args.mix_lam_max)
            if args.mix_label == "partner":
                lam_all = torch.zeros_like(lam_all)
        for s in range(0, n - args.batch_size + 1, args.batch_size):
            idx = perm[s:s + args.batch_size]
            x, y = xtr[idx], ytr[idx]
            logit_d = model_d(x)
            if model_b is None:
                loss = F.cross_entropy(logit_d, y)
            else:
                feat_b = model_b.features(x)
                logit_b = model_b.head(feat_b)
                ce_d, ce_b = ce_none(logit_d, y), ce_none(logit_b, y)
                lff.update(idx, ce_b.detach(), ce_d.detach(), y)
                w = lff.weights(idx, y)
                loss = gce_loss(logit_b, y, q=args.q).mean() + (ce_d * w).mean()
                if method == "selecmix":
                    sl = slice(s, s + args.batch_size)
                    loss = loss + args.mix_weight * mixed_loss(
                        ce_none, model_d(xm_all[sl]), ya_all[sl], yb_all[sl], lam_all[sl])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model_d


@torch.no_grad()
def accuracy(model: nn.Module, x, y, mask=None) -> float:
    pred = model.eval()(x).argmax(1)
    ok = pred == y
    if mask is not None:
        ok = ok[mask]
    return 100.0 * ok.float().mean().item()


# ----------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--seed-offset", type=int, default=0,
                   help="seeds are offset .. offset+seeds-1 (hyper-parameters were tuned on 100+)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--size", type=int, default=16, help="image side after upsampling 8x8")
    p.add_argument("--color-std", type=float, default=0.005)
    p.add_argument("--q", type=float, default=0.7, help="GCE q of the biased model")
    p.add_argument("--ema", type=float, default=0.7, help="LfF loss EMA coefficient")
    p.add_argument("--mix-alpha", type=float, default=1.0)
    p.add_argument("--mix-weight", type=float, default=0.1,
                   help="weight of the mix loss (SelecMix code: 0.1)")
    p.add_argument("--mix-lam-max", type=float, default=0.5,
                   help="anchor share lam = lam_max * Beta(alpha, alpha); 0.5 = partner dominates")
    p.add_argument("--mix-label", choices=("mix", "partner"), default="partner",
                   help="loss target of a mixed image: lam-weighted labels, or the partner's")
    p.add_argument("--ratios", default=",".join(str(r) for r in RATIOS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--quick", action="store_true", help="tiny run (1 seed, 2 epochs, size 8)")
    p.add_argument("--output", type=Path, default=None, help="write the JSON results here")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.size = 1, 2, 8
    torch.set_num_threads(1)
    ratios = [float(r) for r in args.ratios.split(",")]
    methods = args.methods.split(",")
    res = {m: {f"{r:.2f}": [] for r in ratios} for m in methods}
    conf = {m: {f"{r:.2f}": [] for r in ratios} for m in methods}
    t0 = time.time()
    for seed in range(args.seed_offset, args.seed_offset + args.seeds):
        for r in ratios:
            xtr, ytr, _, xte, yte, te_conf = make_data(seed, r, args.size, args.color_std)
            for m in methods:
                model = train(m, xtr, ytr, args, seed)
                res[m][f"{r:.2f}"].append(accuracy(model, xte, yte))
                conf[m][f"{r:.2f}"].append(accuracy(model, xte, yte, te_conf))
                print(f"seed {seed} ratio {r:.2f} {m:9s} unbiased {res[m][f'{r:.2f}'][-1]:6.2f} "
                      f"conflicting {conf[m][f'{r:.2f}'][-1]:6.2f}  [{time.time() - t0:.0f}s]",
                      flush=True)
    mean = {m: {k: float(np.mean(v)) for k, v in d.items()} for m, d in res.items()}
    std = {m: {k: float(np.std(v)) for k, v in d.items()} for m, d in res.items()}
    print(f"\nUnbiased test accuracy (%), mean +- std over {args.seeds} seed(s)")
    print("method     " + "".join(f"{'conflict ' + k:>18s}" for k in mean[methods[0]]))
    for m in methods:
        print(f"{m:10s} " + "".join(f"{mean[m][k]:11.2f} +-{std[m][k]:5.2f}" for k in mean[m]))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(mean, indent=2))
        print(f"wrote {args.output}")
    return mean


if __name__ == "__main__":
    main()
