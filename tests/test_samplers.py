import itertools

import numpy as np
import torch

from datamodules.datamodule import UDADataModule
from datamodules.samplers import ShardSampler, UDATrainSampler


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_shard_sampler_covers_each_index_exactly_once_without_padding():
    for n, world in [(7, 2), (5, 3), (1, 2), (10, 4)]:
        shards = [list(ShardSampler(n, r, world)) for r in range(world)]
        flat = sorted(i for s in shards for i in s)
        assert flat == list(range(n))
        assert [len(ShardSampler(n, r, world)) for r in range(world)] == [len(s) for s in shards]


def test_train_sampler_ranks_partition_each_epoch():
    n_src, n_tgt, world = 10, 6, 2
    draws = [take(UDATrainSampler(n_src, n_tgt, seed=1, rank=r, world_size=world), 5)
             for r in range(world)]
    src = sorted(d[0] for rank in draws for d in rank)
    assert src == list(range(n_src))  # one source epoch split over the two ranks, no duplicate
    seeds = [d[1] for rank in draws for d in rank]
    assert len(set(seeds)) == len(seeds)  # every draw has its own augmentation seed


def test_train_sampler_is_deterministic_reshuffles_and_resumes():
    a = take(UDATrainSampler(5, 4, seed=3), 15)
    assert a == take(UDATrainSampler(5, 4, seed=3), 15)
    assert a != take(UDATrainSampler(5, 4, seed=4), 15)
    epochs = [[d[0] for d in a[i:i + 5]] for i in (0, 5, 10)]
    assert all(sorted(e) == list(range(5)) for e in epochs) and epochs[0] != epochs[1]
    # starting at position 7 continues the same stream
    assert take(UDATrainSampler(5, 4, seed=3, start=7), 8) == a[7:]


def _batches(dm, n):
    return list(itertools.islice(iter(dm.train_dataloader()), n))


def test_datamodule_batches_follow_contract_and_ignore_worker_count(toy_root):
    from datamodules.datasets import CityscapesDataset, GTA5Dataset
    from datamodules.transforms import build_transform
    t = build_transform(scale_range=(0.8, 1.2), crop=(64, 96), hflip=0.5, jitter=0.2)

    def make(workers):
        src = GTA5Dataset(toy_root / "source", transform=t)
        tgt = CityscapesDataset(toy_root / "target", "train", transform=t, labelled=False)
        val = CityscapesDataset(toy_root / "target", "val",
                                transform=build_transform(transform_mask=False))
        return UDADataModule(src, tgt, val, batch_size=3, val_batch_size=2, num_workers=workers,
                             seed=5)

    b0 = _batches(make(0), 3)
    b2 = _batches(make(2), 3)
    batch = b0[0]
    assert batch["source"]["image"].shape == (3, 3, 64, 96)
    assert batch["source"]["mask"].shape == (3, 64, 96)
    assert batch["source"]["mask"].dtype == torch.int64
    assert batch["target"]["image"].shape == (3, 3, 64, 96) and "mask" not in batch["target"]
    for x, y in zip(b0, b2):
        assert x["source"]["name"] == y["source"]["name"]
        assert torch.equal(x["source"]["image"], y["source"]["image"])
        assert torch.equal(x["source"]["mask"], y["source"]["mask"])
        assert torch.equal(x["target"]["image"], y["target"]["image"])
    val = list(make(0).val_dataloader())
    assert sum(len(b["name"]) for b in val) == 5
    assert val[0]["mask"].shape[-2:] == val[0]["image"].shape[-2:] == (128, 256)
    assert set(np.unique(torch.cat([b["mask"].flatten() for b in val]).numpy())) <= \
        set(range(19)) | {255}
