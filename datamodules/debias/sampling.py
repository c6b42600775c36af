"""Rare-class sampling (RCS, DAFormer, Hoyer et al., CVPR 2022).

Source images are drawn in two stages: a class c with probability
    P(c) = softmax_c((1 - f_c) / T),   f_c = pixels of class c / all labelled pixels,
then a uniformly random image that contains c (more than `min_pixels` pixels of it). A small
temperature T favours rare classes (T = 0.01 in DAFormer); T -> inf gives uniform classes.
Classes without any eligible image get probability 0 (the others are renormalised).
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Sampler

IGNORE_INDEX = 255


def class_pixel_counts(masks: torch.Tensor, num_classes: int,
                       ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(B,H,W) int masks -> (B, num_classes) int64 pixel counts per image (ignore skipped)."""
    m = masks.flatten(1).long()
    valid = (m != ignore_index) & (m >= 0) & (m < num_classes)
    img = torch.arange(m.shape[0], device=m.device).view(-1, 1).expand_as(m)
    key = (img * num_classes + m)[valid]
    return torch.bincount(key, minlength=m.shape[0] * num_classes).view(m.shape[0], num_classes)


def rare_class_probabilities(class_pixels_per_image: torch.Tensor, temperature: float = 0.01,
                             min_pixels: int = 0) -> torch.Tensor:
    """Class sampling probabilities (C,) float64 from per-image pixel counts (N, C).

    f_c uses all pixels of the dataset; P(c) = softmax over the eligible classes of
    (1 - f_c) / temperature, 0 for classes that no image has more than `min_pixels` pixels of
    (with min_pixels=0: classes that never occur).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    counts = torch.as_tensor(class_pixels_per_image, dtype=torch.float64)
    if counts.dim() != 2:
        raise ValueError(f"expected (N, C) pixel counts, got shape {tuple(counts.shape)}")
    total = counts.sum()
    if total <= 0:
        raise ValueError("no labelled pixel at all")
    freq = counts.sum(0) / total
    eligible = (counts > min_pixels).any(0)
    logits = ((1 - freq) / temperature).masked_fill(~eligible, float("-inf"))
    return torch.softmax(logits, dim=0)


class RareClassSampler(Sampler):
    """Indices drawn by rare-class sampling; deterministic given (seed, epoch, rank).

    class_pixels_per_image (N, C) counts. Each epoch yields `num_samples` indices (default N)
    per rank; the ranks take disjoint positions (rank, rank + W, ...) of one global stream of
    num_samples * world_size draws seeded by (seed, epoch). Call set_epoch(e) for new draws.
    """

    def __init__(self, class_pixels_per_image: torch.Tensor, temperature: float = 0.01,
                 min_pixels: int = 0, num_samples: Optional[int] = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        counts = torch.as_tensor(class_pixels_per_image)
        self.probs = rare_class_probabilities(counts, temperature, min_pixels)
        self.images_of_class = [torch.nonzero(counts[:, c] > min_pixels).squeeze(1)
                                for c in range(counts.shape[1])]
        self.num_samples = counts.shape[0] if num_samples is None else num_samples
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws -> (image indices (n,), sampled classes (n,)), both int64."""
        classes = torch.multinomial(self.probs, n, replacement=True, generator=generator)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        idx = torch.empty(n, dtype=torch.long)
        for k in range(n):
            pool = self.images_of_class[int(classes[k])]
            idx[k] = pool[min(int(u[k] * pool.numel()), pool.numel() - 1)]
        return idx, classes

    def index_at(self, seed: int, position: int) -> int:
        """The source image of global stream position `position`: one draw seeded by
        (seed, position), so any position can be computed on its own (resume, DDP)."""
        s = int(np.random.SeedSequence([seed, 7, position]).generate_state(1)[0])
        return int(self.draw(1, torch.Generator().manual_seed(s))[0][0])

    def __iter__(self) -> Iterator[int]:
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        g = torch.Generator().manual_seed(seed)
        idx, _ = self.draw(self.num_samples * self.world_size, g)
        return iter(idx[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.num_samples


def dataset_class_counts(dataset, num_classes: int) -> torch.Tensor:
    """(N, C) int64 pixel counts of each labelled image's trainIds (read without transforms).

    `dataset` is a `SegmentationDataset`. One pass over its label files (minutes for 25k GTA5
    labels): training reads them from the cache of `datamodules.class_stats.class_counts`.
    """
    rows = []
    for s in dataset.samples:
        mask = torch.from_numpy(dataset.load_label(s.label).astype("int64"))
        rows.append(class_pixel_counts(mask.unsqueeze(0), num_classes)[0])
    return torch.stack(rows) if rows else torch.zeros(0, num_classes, dtype=torch.long)
