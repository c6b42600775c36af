"""Samplers that are correct under DDP without Lightning's padding `DistributedSampler`.

`UDATrainSampler` is infinite (training is step-based): each rank draws the k-th sample of a
global stream g = k * world_size + rank, so ranks never share a draw. Per domain, epoch
e = g // n uses permutation e of that domain (seeded by (seed, domain, e)); the sample's
augmentation seed is derived from (seed, domain, g). The stream therefore depends only on
(seed, world_size, position): not on worker count, and resumable from any `start`.
Items: (source_index, source_seed, target_index, target_seed). With `source_index_at` (e.g.
`RareClassSampler.index_at`), the source image of position g is `source_index_at(seed, g)`
instead of a permutation entry.

`ShardSampler` (evaluation) gives rank r the indices r, r + W, r + 2W, ...: no padding, so each
image is evaluated exactly once over all ranks (ranks may get one image more or less).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

_DOMAIN_SOURCE, _DOMAIN_TARGET = 0, 1


class _EpochPermutation:
    def __init__(self, n: int, seed: int, domain: int, shuffle: bool):
        self.n, self.seed, self.domain, self.shuffle = n, seed, domain, shuffle
        self._epoch, self._perm = -1, None

    def __call__(self, g: int) -> int:
        epoch, pos = divmod(g, self.n)
        if not self.shuffle:
            return pos
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, self.domain, epoch]).permutation(self.n)
            self._epoch = epoch
        return int(self._perm[pos])


def sample_seed(seed: int, domain: int, g: int) -> int:
    return int(np.random.SeedSequence([seed, domain, g]).generate_state(1)[0])


class UDATrainSampler(Sampler):
    def __init__(self, num_source: int, num_target: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, start: int = 0, shuffle: bool = True,
                 source_index_at=None):
        if num_source <= 0 or num_target <= 0:
            raise ValueError("both source and target datasets must be non-empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_source, self.num_target = num_source, num_target
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.start, self.shuffle = start, shuffle
        self.source_index_at = source_index_at

    def __iter__(self) -> Iterator[tuple[int, int, int, int]]:
        src = _EpochPermutation(self.num_source, self.seed, _DOMAIN_SOURCE, self.shuffle)
        tgt = _EpochPermutation(self.num_target, self.seed, _DOMAIN_TARGET, self.shuffle)
        k = self.start
        while True:
            g = k * self.world_size + self.rank
            si = src(g) if self.source_index_at is None else self.source_index_at(self.seed, g)
            yield (si, sample_seed(self.seed, _DOMAIN_SOURCE, g),
                   tgt(g), sample_seed(self.seed, _DOMAIN_TARGET, g))
            k += 1


class ShardSampler(Sampler):
    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))
