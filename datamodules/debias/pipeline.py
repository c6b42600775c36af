"""Debiasing augmentations applied to whole UDA training batches, on device.

`DebiasPipeline` owns an ordered list of batch mixers and the callables that the
LightningModule registers for the model-in-the-loop ones (no model state: LfF's statistics live
with the recipe, uda.losses.lff). `apply(batch, seed)` runs
every mixer with one `torch.Generator` seeded by `seed` (the datamodule derives it from
(seed, rank, iteration): reproducible, resumable, and different on each rank).

Batch contract (see `datamodules.datamodule`), extended here:
  batch["source"]: image (B,3,h,w), mask (B,h,w), index (B,) dataset indices, and after a
      blend (mixup / selecmix) also mask_b (B,h,w) and lam (B,): the loss is
      lam * CE(mask) + (1 - lam) * CE(mask_b) (`mixed_loss`);
Pixel-pasting mixers keep every mask equal to the source mask wherever source pixels were
pasted. Images are dataset-normalised throughout.

Registered callables (`register`), all without gradients:
  bias_features(x) -> (B,D)                    SelecMix partner choice
  style_codec(x_content, x_style, alpha, donor) -> x   style swap: alpha (B,) in [0, 1],
                                               donor: the domain of x_style
"""
from __future__ import annotations

from typing import Callable

import torch

from datamodules.debias.mixing import class_mix_mask, cutmix, mixup, sample_beta
from datamodules.debias.selecmix import select_contradicting

Hooks = dict[str, Callable]


def partner_permutation(b: int, generator: torch.Generator, device) -> torch.Tensor:
    """A random cyclic shift (B,): every image gets another image of the batch (B > 1)."""
    k = int(torch.randint(1, max(b, 2), (1,), generator=generator, device=generator.device))
    return (torch.arange(b, device=device) + (k if b > 1 else 0)) % b


def _chosen(p: float, b: int, generator: torch.Generator, device) -> torch.Tensor:
    """(B,) bool: which images a mixer changes (each with probability p)."""
    return (torch.rand(b, generator=generator, device=generator.device) < p).to(device)


def _with_partners(batch, g):
    """(source dict, images, masks, partner permutation) of a within-source mixer."""
    src = batch["source"]
    x, y = src["image"], src["mask"]
    return src, x, y, partner_permutation(x.shape[0], g, x.device)


def _need(hooks: Hooks, mixer) -> Callable:
    """The callable that `mixer` (a model-in-the-loop mixer) declares in `requires`."""
    if mixer.requires not in hooks:
        raise RuntimeError(f"data.debias.{mixer.name} needs a '{mixer.requires}' callable, which "
                           f"the training method did not register (registered: "
                           f"{sorted(hooks) or 'none'})")
    return hooks[mixer.requires]


class StyleSwap:
    """Content kept, style moved towards a donor's: x' = codec(x, donor, alpha)."""
    name, requires = "style_swap", "style_codec"

    def __init__(self, p: float = 0.5, donor: str = "target", alpha_range=(0.5, 1.0)):
        self.p, self.donor, self.alpha_range = p, donor, tuple(alpha_range)

    def __call__(self, batch, g, hooks):
        src = batch["source"]
        x = src["image"]
        b, dev = x.shape[0], x.device
        perm = partner_permutation(b, g, dev)
        donors = (batch["target"]["image"] if self.donor == "target" else x)[perm]
        lo, hi = self.alpha_range
        alpha = lo + (hi - lo) * torch.rand(b, generator=g, device=g.device).to(dev)
        pick = _chosen(self.p, b, g, dev)
        if pick.any():
            swapped = _need(hooks, self)(x[pick], donors[pick], alpha[pick], self.donor)
            x = x.clone()
            x[pick] = swapped.to(x.dtype)
        return {**batch, "source": {**src, "image": x}}


class CutMix:
    """A box of another source image (image and mask) pasted on each chosen image."""
    name, requires = "cutmix", None

    def __init__(self, p: float = 0.5, alpha: float = 1.0):
        self.p, self.alpha = p, alpha

    def __call__(self, batch, g, hooks):
        src, x, y, perm = _with_partners(batch, g)
        xm, ym, _ = cutmix(x, y, x[perm], y[perm], self.alpha, g)
        pick = _chosen(self.p, x.shape[0], g, x.device)
        return {**batch, "source": {**src, "image": torch.where(pick.view(-1, 1, 1, 1), xm, x),
                                    "mask": torch.where(pick.view(-1, 1, 1), ym, y)}}


class ClassMix:
    """Within the source batch: half the classes of another image pasted (image and mask)."""
    name, requires = "classmix", None

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, batch, g, hooks):
        src, x, y, perm = _with_partners(batch, g)
        m = class_mix_mask(y[perm], g) & _chosen(self.p, x.shape[0], g, x.device).view(-1, 1, 1)
        return {**batch, "source": {**src, "image": torch.where(m.unsqueeze(1), x[perm], x),
                                    "mask": torch.where(m, y[perm], y)}}


class Mixup:
    """Each chosen source image blended with another: x = lam x_a + (1 - lam) x_b."""
    name, requires = "mixup", None

    def __init__(self, p: float = 0.5, alpha: float = 0.4):
        self.p, self.alpha = p, alpha

    def __call__(self, batch, g, hooks):
        src, x, y, perm = _with_partners(batch, g)
        xm, _, _, lam = mixup(x, y, x[perm], y[perm], self.alpha, g)
        return _blended(batch, xm, y[perm], lam, _chosen(self.p, x.shape[0], g, x.device))


class SelecMix:
    """Mixup with the batch image of the most different bias (biased-network features)."""
    name, requires = "selecmix", "bias_features"

    def __init__(self, p: float = 0.5, alpha: float = 1.0, lam_max: float = 0.5):
        self.p, self.alpha, self.lam_max = p, alpha, lam_max

    def __call__(self, batch, g, hooks):
        src = batch["source"]
        x, y = src["image"], src["mask"]
        with torch.no_grad():
            feats = _need(hooks, self)(x)
        # street scenes share one "label" at image level: the contradicting partner is the
        # same-label image whose bias differs most
        same = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        partner = select_contradicting(feats, same, g, mode="same_label_diff_bias")
        lam = (self.lam_max * sample_beta(self.alpha, x.shape[0], g, x.device)).to(x.dtype)
        lx = lam.view(-1, 1, 1, 1)
        xm = lx * x + (1 - lx) * x[partner]
        return _blended(batch, xm, y[partner], lam, _chosen(self.p, x.shape[0], g, x.device))


def _blended(batch, xm, mask_b, lam, pick):
    src = batch["source"]
    lam = torch.where(pick, lam, torch.ones_like(lam))
    x = torch.where(pick.view(-1, 1, 1, 1), xm, src["image"])
    return {**batch, "source": {**src, "image": x, "mask_b": mask_b, "lam": lam}}


class DebiasPipeline:
    """Mixers in order + registered callables. A mixer is callable as
    mixer(batch, generator, hooks) -> batch and has `name` (its data.debias key) and `requires`
    (the callable it needs, or None)."""

    def __init__(self, mixers: list):
        self.mixers = list(mixers)
        self.hooks: Hooks = {}

    def register(self, **callables: Callable) -> None:
        self.hooks.update(callables)

    @property
    def needs(self) -> set[str]:
        """The callables the mixers will ask for."""
        return {m.requires for m in self.mixers if m.requires}

    def __bool__(self) -> bool:
        return bool(self.mixers)

    @torch.no_grad()  # augmentations are inputs: no gradient reaches the registered models
    def apply(self, batch: dict, seed: int) -> dict:
        if not self.mixers:
            return batch
        dev = batch["source"]["image"].device
        g = torch.Generator(device=dev if dev.type == "cuda" else "cpu").manual_seed(seed)
        for mixer in self.mixers:
            batch = mixer(batch, g, self.hooks)
        return batch
