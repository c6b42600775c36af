"""Adversarial losses as pure tensor functions of discriminator logits.

kind: "hinge" (D: mean(relu(1 - real)) + mean(relu(1 + fake)); G: -mean(fake)),
"lsgan" (D: mean((real - 1)^2) + mean(fake^2); G: mean((fake - 1)^2)),
"vanilla" (binary cross-entropy with logits; G is the non-saturating -log sigmoid(fake)).
D's labels: real 1, fake 0. The generator's loss asks D to read its samples as `read_as`: 1 (real,
the usual game: DRANet's translations) or 0 (the output-space recipe, whose D labels target 1 and
source 0 as the official AdaptSegNet / ADVENT code, and whose segmenter wants its target outputs
read as source: hinge +mean(fake), lsgan mean(fake^2), vanilla -log(1 - sigmoid(fake))).
The discriminator loss is the plain sum of its real and fake terms; AdaptSegNet and ADVENT halve
it (the output-space recipe, `uda.modules.adversarial`, does too). Under Adam a constant factor
c on a loss is the same as dividing Adam's eps by c: Adam(c g, eps) = Adam(g, eps / c) exactly
(tests/test_baseline_parity.py), so an unhalved loss trains like the halved one with eps 2e-8
instead of 1e-8, which matters only for parameter components whose gradient is of order 1e-8
(measured on the output discriminator: up to 5 % of a step on such components). Logits of any
shape (e.g. PatchGAN maps (B, 1, h, w)); real and fake may have different shapes. Computed in
float32; returns a scalar.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("hinge", "lsgan", "vanilla")


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown GAN loss kind {kind!r}; expected one of {list(KINDS)}")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       kind: str) -> torch.Tensor:
    """Loss of the discriminator: real_logits should read real, fake_logits fake. Detach the
    fake images (or logits) in the caller so this step does not update the generator."""
    _check(kind)
    real, fake = real_logits.float(), fake_logits.float()
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if kind == "lsgan":
        return (real - 1.0).pow(2).mean() + fake.pow(2).mean()
    return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def generator_loss(fake_logits: torch.Tensor, kind: str, read_as: int = 1) -> torch.Tensor:
    """Loss of the generator: D should read its samples (fake_logits) as label `read_as`
    (1: real, the usual game; 0: the output-space recipe's source label)."""
    _check(kind)
    if read_as not in (0, 1):
        raise ValueError(f"read_as must be 1 (real) or 0 (fake), got {read_as!r}")
    fake = fake_logits.float()
    if kind == "hinge":
        return -fake.mean() if read_as else fake.mean()
    if kind == "lsgan":
        return (fake - float(read_as)).pow(2).mean()
    return F.binary_cross_entropy_with_logits(fake, torch.full_like(fake, float(read_as)))
