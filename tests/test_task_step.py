"""The task network's step always carries the debiasing terms: a recipe cannot leave them out."""
import pytest
import pytorch_lightning as pl
import torch.nn.functional as F

from conftest import shrunk_config
from uda import build
from uda.modules.supervised import SourceOnly


class DirectStep(SourceOnly):
    """Steps the task optimizer itself, bypassing task_step."""

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = self.source_loss(self.segmenter(batch["source"]["image"]), batch["source"])
        self.backward_step(opt, loss, "segmentation")


class OwnCE(SourceOnly):
    """Computes its own source CE (blended labels and LfF weights would be lost)."""

    def training_step(self, batch, batch_idx):
        src = batch["source"]
        loss = F.cross_entropy(self.segmenter(src["image"]), src["mask"], ignore_index=255)
        self.task_step(self.optimizers(), {"seg": loss}, batch)


def fit(module, cfg):
    trainer = pl.Trainer(fast_dev_run=1, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False)
    trainer.fit(module, datamodule=build.build_datamodule(cfg))
    return trainer


def recipe(cls, cfg):
    base = build.build_module(cfg)
    module = cls(base.segmenter, base.class_names, max_steps=2)
    module.biased, module.debias_settings = base.biased, base.debias_settings
    return module


def test_task_optimizer_stepped_outside_task_step_is_refused(toy_root, tmp_path):
    cfg = shrunk_config(toy_root, tmp_path, "source_only")
    with pytest.raises(RuntimeError, match="use task_step"):
        fit(recipe(DirectStep, cfg), cfg)


@pytest.mark.parametrize("option", ["data.debias.mixup.enabled=true", "data.debias.lff.enabled=true"])
def test_source_ce_outside_source_loss_is_refused_when_debiasing_needs_it(toy_root, tmp_path, option):
    cfg = shrunk_config(toy_root, tmp_path, "source_only", option, "data.debias.mixup.p=1.0")
    with pytest.raises(RuntimeError, match="source_loss"):
        fit(recipe(OwnCE, cfg), cfg)


def test_without_debiasing_a_recipe_may_compute_its_own_ce(toy_root, tmp_path):
    cfg = shrunk_config(toy_root, tmp_path, "source_only")
    assert fit(recipe(OwnCE, cfg), cfg).global_step == 1
