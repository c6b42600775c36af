"""`UDADataModule`: labelled source + unlabelled target per training step, target val.

Training batch contract (after default collation), per rank:
  {"source": {"image": (B,3,h,w) float32, "mask": (B,h,w) int64, "name": [str]},
   "target": {"image": (B,3,h,w) float32, "name": [str]}}
(for the oracle, "source" holds labelled target-train images). Validation batch:
  {"image": (B,3,h,w) float32 at inference size, "mask": (B,H,W) int64 at label resolution,
   "name": [str]}
The datasets are built by the caller (config-agnostic here); the train datasets may be None
for evaluation-only use. Under DDP the rank and world size
come from the Trainer; use the Trainer with `use_distributed_sampler=False`.
"""
from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.samplers import ShardSampler, UDATrainSampler


class PairedDataset(Dataset):
    """Indexes (source_index, source_seed, target_index, target_seed) -> source+target items."""

    def __init__(self, source: Dataset, target: Dataset):
        self.source, self.target = source, target

    def __getitem__(self, index):
        si, sseed, ti, tseed = index
        return {"source": self.source[(si, sseed)], "target": self.target[(ti, tseed)]}


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy/random from it so
    # any randomness outside the per-sample seeds is distinct per worker and reproducible.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


class UDADataModule(pl.LightningDataModule):
    def __init__(self, source_train: Dataset, target_train: Dataset, target_val: Dataset,
                 batch_size: int = 2, val_batch_size: int = 1, num_workers: int = 0,
                 pin_memory: bool = False, persistent_workers: bool = False, seed: int = 0):
        super().__init__()
        self.source_train, self.target_train, self.target_val = source_train, target_train, target_val
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed = seed
        self.start_step = 0  # training position (iterations already done), for exact resume

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _loader(self, dataset, sampler, batch_size: int, drop_last: bool) -> DataLoader:
        rank, _ = self._rank_world()
        gen = torch.Generator().manual_seed(self.seed * 1000 + rank)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers,
                          worker_init_fn=_seed_worker, generator=gen)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        sampler = UDATrainSampler(len(self.source_train), len(self.target_train), seed=self.seed,
                                  rank=rank, world_size=world,
                                  start=self.start_step * self.batch_size)
        return self._loader(PairedDataset(self.source_train, self.target_train), sampler,
                            self.batch_size, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        return self._loader(self.target_val, ShardSampler(len(self.target_val), rank, world),
                            self.val_batch_size, drop_last=False)
