"""2-process CPU DDP training (gloo, ddp_fork): ranks end with identical parameters and buffers;
the CLI path writes one run directory and results.json from rank 0."""
import json

import pytest
import pytorch_lightning as pl
import torch

from conftest import REPO, SHRINK
from uda import build
from uda.cli import main
from uda.config import load_config

TINY = [*SHRINK, "trainer.accelerator=cpu"]


class DumpState(pl.Callback):
    def __init__(self, out):
        self.out = out

    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.out / f"rank{trainer.global_rank}.pt")


@pytest.mark.ddp
@pytest.mark.parametrize("method,sync_bn", [("source_only", False), ("dranet", False),
                                            ("source_only", True)])
def test_two_ranks_end_with_identical_parameters_and_buffers(toy_root, tmp_path, method, sync_bn):
    cfg = load_config(REPO / f"configs/toy/{method}.yaml", [
        f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}",
        f"run.dir={tmp_path}", "trainer.max_steps=3", "trainer.val_every=3",
        "trainer.devices=2", "trainer.strategy=ddp_fork",
        f"trainer.sync_batchnorm={str(sync_bn).lower()}", *TINY])
    module, dm = build.build_module(cfg), build.build_datamodule(cfg)
    if sync_bn:
        from uda.models.sync_bn import AllReduceBatchNorm2d
        assert any(isinstance(m, AllReduceBatchNorm2d) for m in module.modules())
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = build.build_trainer(cfg, tmp_path, [DumpState(tmp_path)],
                                  module.optimizer_steps_per_iteration)
    trainer.fit(module, datamodule=dm)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"state differs between ranks: {differ[:5]}"
    # and training did something: parameters moved away from the initial weights
    assert any(not torch.equal(a[k], v) for k, v in initial.items()
               if k.startswith("segmenter.") and v.is_floating_point())


@pytest.mark.ddp
def test_cli_two_process_training_writes_one_run(toy_root, tmp_path):
    run = tmp_path / "run"
    rc = main(["train", "--config", str(REPO / "configs/toy/source_only.yaml"),
               f"data.source.root={toy_root / 'source'}",
               f"data.target.root={toy_root / 'target'}", f"run.dir={run}",
               "trainer.max_steps=4", "trainer.val_every=2", "trainer.devices=2",
               "trainer.strategy=ddp_fork", *TINY])
    assert rc == 0
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 4 and results["num_images"] == 5
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["uda"]["step"] == 4


@pytest.mark.parametrize("overrides,start", [
    (["trainer.devices=2", "trainer.accelerator=cpu"], "fork"),
    (["trainer.devices=[0,1]", "trainer.accelerator=gpu"], "popen"),
    (["trainer.devices=1", "trainer.num_nodes=2", "trainer.accelerator=cpu"], "fork"),
])
def test_auto_strategy_with_several_processes_is_our_ddp(overrides, start, monkeypatch):
    """Lightning's plain DDP (what `auto` would pick) fails on DRANet's unused parameters."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # (the gpu case; cpu ignores it)
    cfg = load_config(REPO / "configs/toy/dranet.yaml", [
        "trainer.ddp_timeout_s=77", *overrides])
    assert cfg.trainer.strategy == "auto"
    strategy = build.build_strategy(cfg)
    assert isinstance(strategy, pl.strategies.DDPStrategy)
    assert strategy._ddp_kwargs["find_unused_parameters"] is True
    assert strategy._start_method == start
    assert strategy._timeout.total_seconds() == 77


def test_auto_strategy_on_one_process_stays_lightnings():
    cfg = load_config(REPO / "configs/toy/dranet.yaml", ["trainer.accelerator=cpu"])
    assert build.build_strategy(cfg) == "auto"


def test_auto_strategy_reaches_the_trainer(tmp_path):
    """The Trainer is built (no processes start before fit) with our DDP strategy."""
    cfg = load_config(REPO / "configs/toy/dranet.yaml", [
        "trainer.devices=2", "trainer.accelerator=cpu", "logger.name=none",
        "eval.translation_images=0", "trainer.progress_bar=false"])
    trainer = build.build_trainer(cfg, tmp_path, [], 3)
    assert isinstance(trainer.strategy, pl.strategies.DDPStrategy)
    assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is True
    assert trainer.num_devices == 2
