"""SelecMix (Hwang et al., NeurIPS 2022): mixup of *contradicting* pairs.

A contradicting pair is (same label, different bias) or (different label, same bias). The bias
attribute is unknown, so it is read off the features of an auxiliary *biased* model (e.g. the
GCE-trained model of LfF): samples whose biased features are similar share the bias. For each
anchor, the partner is
- "same_label_diff_bias": among the other samples with the anchor's label, the one whose
  biased feature is LEAST cosine-similar to the anchor's;
- "diff_label_same_bias": among the samples with another label, the MOST similar one;
- "auto": one of the two per anchor, each with probability 0.5.
When the chosen kind has no candidate in the batch, the partner is a random other sample.
Mixing the pair then teaches the debiased model that the bias does not predict the label.

Class labels only (B,): the notion of pairs is per image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from datamodules.debias.mixing import sample_beta

MODES = ("auto", "same_label_diff_bias", "diff_label_same_bias")


def select_contradicting(features_bias: torch.Tensor, labels: torch.Tensor,
                         generator: torch.Generator, mode: str = "auto") -> torch.Tensor:
    """Partner index (B,) int64 for each sample (never itself when B > 1).

    features_bias (B,D) float (any scale: cosine similarity is used); labels (B,) int64.
    Ties go to the lowest index. Randomness (the per-anchor coin of "auto" and the fallback
    partner) comes from `generator`; both are always drawn, so the generator advances the same
    way whatever the batch.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    b = labels.shape[0]
    if features_bias.shape[0] != b:
        raise ValueError(f"{features_bias.shape[0]} features for {b} labels")
    dev = features_bias.device
    f = F.normalize(features_bias.detach().float().flatten(1), dim=1)
    sim = f @ f.t()
    eye = torch.eye(b, dtype=torch.bool, device=dev)
    same = labels.view(-1, 1).to(dev) == labels.view(1, -1).to(dev)
    cand_same, cand_diff = same & ~eye, ~same

    least_similar = sim.masked_fill(~cand_same, float("inf")).argmin(dim=1)
    most_similar = sim.masked_fill(~cand_diff, float("-inf")).argmax(dim=1)

    gdev = generator.device
    coin = (torch.rand(b, generator=generator, device=gdev) < 0.5).to(dev)
    other = torch.randint(0, max(b - 1, 1), (b,), generator=generator, device=gdev).to(dev)
    idx = torch.arange(b, device=dev)
    fallback = torch.where(other >= idx, other + 1, other) if b > 1 else idx

    use_same = {"auto": coin, "same_label_diff_bias": torch.ones_like(coin),
                "diff_label_same_bias": torch.zeros_like(coin)}[mode]
    partner = torch.where(use_same, least_similar, most_similar)
    has = torch.where(use_same, cand_same.any(dim=1), cand_diff.any(dim=1))
    return torch.where(has, partner, fallback)


def selecmix(x: torch.Tensor, y: torch.Tensor, features_bias: torch.Tensor, alpha: float,
             generator: torch.Generator, mode: str = "auto", lam_max: float = 1.0):
    """Mix each sample with its contradicting partner: x_mixed = lam * x + (1 - lam) * x[partner].

    x (B,...) float; y (B,) int64; features_bias (B,D). lam = lam_max * Beta(alpha, alpha) per
    sample, lam_max in (0, 1]. Returns (x_mixed (like x), y_a = y, y_b = y[partner],
    lam (B,) dtype of x); train with `uda.losses.mixed.mixed_loss(loss_fn, logits, y_a, y_b,
    lam)` as for mixup.
    lam_max=0.5 is the SelecMix code's setting: the partner dominates the mixed image, so an
    anchor that follows the bias mixed with a partner that contradicts it yields a new
    bias-conflicting sample (the code then uses the partner's label alone, i.e. lam = 0 in
    the loss; `mixed_loss` with the returned lam is the proportional variant).
    """
    if not 0 < lam_max <= 1:
        raise ValueError(f"lam_max must be in (0, 1], got {lam_max}")
    partner = select_contradicting(features_bias, y, generator, mode)
    lam = (lam_max * sample_beta(alpha, x.shape[0], generator, x.device)).to(x.dtype)
    lx = lam.view(-1, *([1] * (x.dim() - 1)))
    return lx * x + (1 - lx) * x[partner], y, y[partner], lam
