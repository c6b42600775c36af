"""Faults: NaN/Inf losses (stop with a clear error, or skip), a rank that dies."""
import json
import subprocess
import sys
import textwrap

import pytest
import pytorch_lightning as pl
import torch

import uda.build
from conftest import REPO
from uda.cli import main

SHRINK = ["data.num_workers=0", "data.batch_size=2", "data.source_transform.crop=[32,64]",
          "data.target_transform.crop=[32,64]", "model.width=8", "method.dranet.width=8",
          "method.dranet.d_width=8", "trainer.progress_bar=false", "trainer.max_steps=6",
          "trainer.val_every=2"]


class PoisonBatch(pl.Callback):
    """Replaces the source images of one batch (at iteration `n`) with NaN."""

    def __init__(self, n):
        self.n, self.done = n, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.iteration == self.n and not self.done:
            batch["source"]["image"].fill_(float("nan"))
            self.done = True


def run(method, toy_root, run_dir, monkeypatch, *extra, poison_at=3):
    original = uda.build.build_trainer

    def with_poison(*a, **k):
        trainer = original(*a, **k)
        trainer.callbacks.insert(0, PoisonBatch(poison_at))
        return trainer

    monkeypatch.setattr(uda.build, "build_trainer", with_poison)
    return main(["train", "--config", str(REPO / f"configs/toy/{method}.yaml"),
                 f"data.source.root={toy_root / 'source'}",
                 f"data.target.root={toy_root / 'target'}", f"run.dir={run_dir}", *SHRINK, *extra])


@pytest.mark.parametrize("method", ["source_only", "dranet"])
def test_nan_loss_stops_and_keeps_last_good_checkpoint(toy_root, tmp_path, monkeypatch, capsys, method):
    rc = run(method, toy_root, tmp_path, monkeypatch)
    err = capsys.readouterr().err
    assert rc == 2 and "non-finite" in err and "at iteration 3" in err
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["uda"]["step"] == 2  # written at the validation of iteration 2, not overwritten
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "results.json").exists()


def test_nan_loss_skipped_when_allowed(toy_root, tmp_path, monkeypatch):
    rc = run("source_only", toy_root, tmp_path, monkeypatch, "trainer.max_nonfinite_skips=1")
    assert rc == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["step"] == 6
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.ddp
def test_a_dying_rank_makes_the_other_exit(toy_root, tmp_path):
    script = tmp_path / "die.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        import pytorch_lightning as pl
        from uda import build
        from uda.config import load_config

        class Die(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, *args):
                if trainer.global_rank == 1 and pl_module.iteration == 2:
                    os._exit(3)

        cfg = load_config({str(REPO / "configs/toy/source_only.yaml")!r}, [
            "data.source.root={toy_root / 'source'}", "data.target.root={toy_root / 'target'}",
            "run.dir={tmp_path / 'run'}", "trainer.devices=2", "trainer.strategy=ddp_fork",
            "trainer.ddp_timeout_s=30", "trainer.max_steps=50", "trainer.val_every=50",
            "data.num_workers=0", "data.batch_size=2", "data.source_transform.crop=[32,64]",
            "model.width=8", "trainer.progress_bar=false"])
        module, dm = build.build_module(cfg), build.build_datamodule(cfg)
        trainer = build.build_trainer(cfg, cfg.run.dir, [Die()], 1)
        trainer.fit(module, datamodule=dm)
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert r.returncode != 0  # ended (no hang) and reported the failure
