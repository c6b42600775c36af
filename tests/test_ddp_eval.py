"""Validation under 2-process CPU DDP (gloo, ddp_fork) equals single-process validation exactly."""
import json

import pytest
import pytorch_lightning as pl
import torch

from datamodules.datamodule import UDADataModule
from datamodules.datasets import CityscapesDataset, GTA5Dataset
from datamodules.labels import CLASS_NAMES
from datamodules.transforms import build_transform
from uda.models import SmallSegNet
from uda.modules import SourceOnly


class DumpResults(pl.Callback):
    """Rank 0 writes the synced results; every rank writes how many images it evaluated."""

    def __init__(self, out):
        self.out = out

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        pl_module._seen = getattr(pl_module, "_seen", []) + list(batch["name"])

    def on_validation_end(self, trainer, pl_module):
        (self.out / f"names_rank{trainer.global_rank}.json").write_text(json.dumps(pl_module._seen))
        if trainer.is_global_zero:
            (self.out / "results.json").write_text(json.dumps(pl_module.last_results))


def validate(toy_root, out, devices, strategy):
    torch.manual_seed(0)
    module = SourceOnly(SmallSegNet(19, width=8), CLASS_NAMES, max_steps=1)
    t = build_transform()
    dm = UDADataModule(GTA5Dataset(toy_root / "source", transform=t),
                       CityscapesDataset(toy_root / "target", "train", transform=t, labelled=False),
                       CityscapesDataset(toy_root / "target", "val",
                                         transform=build_transform(transform_mask=False)),
                       val_batch_size=2)
    out.mkdir()
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, callbacks=[DumpResults(out)])
    trainer.validate(module, datamodule=dm, verbose=False)
    return json.loads((out / "results.json").read_text())


@pytest.mark.ddp
def test_two_process_validation_equals_single_process(toy_root, tmp_path):
    single = validate(toy_root, tmp_path / "single", 1, "auto")
    ddp = validate(toy_root, tmp_path / "ddp", 2, "ddp_fork")
    assert single["num_images"] == ddp["num_images"] == 5  # odd: ranks get 3 and 2, no padding
    assert ddp["confusion_matrix"] == single["confusion_matrix"]
    assert ddp["mIoU"] == single["mIoU"]
    names = [json.loads((tmp_path / "ddp" / f"names_rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(len(n) for n in names) == [2, 3]
    assert sorted(names[0] + names[1]) == sorted(
        json.loads((tmp_path / "single" / "names_rank0.json").read_text()))
