"""`UDADataModule`: labelled source + unlabelled target per training step, target val.

Training batch contract (after default collation), per rank:
  {"source": {"image": (B,3,h,w) float32, "mask": (B,h,w) int64, "name": [str],
              "index": (B,) int64 dataset index},
   "target": {"image": (B,3,h,w) float32, "name": [str], "index": (B,) int64}}
(for the oracle, "source" holds labelled target-train images). After transfer (`augment`)
the training batch also holds "seed": int, the augmentation seed of this iteration on this rank
(derived from (seed, rank, iteration): reproducible, resumable, different on each rank), which
seeds the debiasing mixers and the recipes' own random mixing (self-training's ClassMix). With a
`DebiasPipeline`, the batch is augmented on device (keys added there: see
`datamodules.debias.pipeline`); its LfF statistics are part of the datamodule's checkpoint
state. Validation batch:
  {"image": (B,3,h,w) float32 at inference size, "mask": (B,H,W) int64 at label resolution,
   "name": [str]}
The datasets are built by the caller (config-agnostic here); the train datasets may be None
for evaluation-only use. Under DDP the rank and world size
come from the Trainer; use the Trainer with `use_distributed_sampler=False`.
"""
from __future__ import annotations

import random
import signal
from typing import Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.debias.pipeline import DebiasPipeline
from datamodules.samplers import ShardSampler, UDATrainSampler


class PairedDataset(Dataset):
    """Indexes (source_index, source_seed, target_index, target_seed) -> source+target items."""

    def __init__(self, source: Dataset, target: Dataset):
        self.source, self.target = source, target

    def __getitem__(self, index):
        si, sseed, ti, tseed = index
        return {"source": {**self.source[(si, sseed)], "index": si},
                "target": {**self.target[(ti, tseed)], "index": ti}}


def _seed_worker(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: workers ignore it, so the main process can finish
    # the iteration and write last.ckpt (uda.callbacks.GracefulStop) with its loaders alive.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # torch seeds each worker from the loader's generator; derive numpy/random from it so
    # any randomness outside the per-sample seeds is distinct per worker and reproducible.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


class UDADataModule(pl.LightningDataModule):
    def __init__(self, source_train: Dataset, target_train: Dataset, target_val: Dataset,
                 batch_size: int = 2, val_batch_size: int = 1, num_workers: int = 0,
                 pin_memory: bool = False, persistent_workers: bool = False, seed: int = 0,
                 debias: Optional[DebiasPipeline] = None, source_index_at=None):
        """debias: augmentations applied to training batches on device; source_index_at:
        position -> source index rule of the train sampler (rare-class sampling)."""
        super().__init__()
        self.source_train, self.target_train, self.target_val = source_train, target_train, target_val
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed = seed
        self.start_step = 0  # training position (iterations already done), for exact resume
        self.debias = debias
        self.source_index_at = source_index_at

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
                                  start=self.start_step * self.batch_size,
                                  source_index_at=self.source_index_at)
        return self._loader(PairedDataset(self.source_train, self.target_train), sampler,
                            self.batch_size, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        return self._loader(self.target_val, ShardSampler(len(self.target_val), rank, world),
                            self.val_batch_size, drop_last=False)

    def augment(self, batch: dict, iteration: int) -> dict:
        """The debiasing augmentations of training iteration `iteration` (on device). Called by
        the LightningModule's `on_after_batch_transfer` (Lightning runs only one of the two
        hooks, the datamodule's when both exist, so this one is not a hook). Adds the
        iteration's seed as batch["seed"]."""
        if "source" not in batch:
            return batch
        rank, _ = self._rank_world()
        seed = int(np.random.SeedSequence([self.seed, rank, iteration, 11]).generate_state(1)[0])
        batch = {**batch, "seed": seed}
        return self.debias.apply(batch, seed) if self.debias else batch

    def state_dict(self) -> dict:
        return {}  # no state: the sampler's position comes from the iteration (start_step)

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore (checkpoints written before this version kept the LfF statistics
        here: the LightningModule reads them, uda.modules.debias)."""
