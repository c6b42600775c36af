"""Faults: NaN/Inf losses (stop with a clear error, or skip), a rank that dies."""
import json
import subprocess
import sys
import textwrap

import pytest
import pytorch_lightning as pl
import torch

import uda.build
from conftest import REPO, SHRINK
from uda.cli import main

TINY = [*SHRINK, "trainer.max_steps=6", "trainer.val_every=2"]


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
                 f"data.target.root={toy_root / 'target'}", f"run.dir={run_dir}", *TINY, *extra])


@pytest.mark.parametrize("method", ["source_only", "dranet"])
def test_nan_loss_stops_and_keeps_last_good_checkpoint(toy_root, tmp_path, monkeypatch, capsys, method):
    rc = run(method, toy_root, tmp_path, monkeypatch)
    err = capsys.readouterr().err
    assert rc == 2 and "non-finite" in err and "at iteration 3" in err
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"{last} (iteration 2) is the last good checkpoint" in err
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["uda"]["step"] == 2  # written at the validation of iteration 2, not overwritten
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "results.json").exists()


def finite(path) -> bool:
    state = torch.load(path, weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_diverging_run_with_no_good_checkpoint_says_so(toy_root, tmp_path, monkeypatch, capsys):
    """lr=1e4: BatchNorm running_var is inf at the first validation (iteration 6), the loss
    still finite; before, the run exited 0 with inf statistics in last.ckpt and best.ckpt."""
    rc = run("source_only", toy_root, tmp_path, monkeypatch, "method.optim.lr=1e4",
             "trainer.val_every=6", poison_at=-1)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("uda: error: non-finite values (NaN/Inf) in ")
    assert "running_var" in err and "at iteration 6" in err and err.count("\n") == 1
    assert "no good checkpoint exists (none was written before the failure)" in err
    assert "last good checkpoint" not in err
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("*.tmp"))
    assert not (tmp_path / "results.json").exists()
    assert (tmp_path / "logs" / "metrics.csv").is_file()  # the divergence stays documented


def test_run_ending_non_finite_names_the_last_good_checkpoint(toy_root, tmp_path, monkeypatch,
                                                              capsys):
    """lr=200 (30 iterations): finite at the validations of iterations 2..8, inf BatchNorm
    statistics at 10 with a finite loss: exit 2, no results.json, and both checkpoints hold
    finite states (last: iteration 8). Before, this run exited 0."""
    rc = run("source_only", toy_root, tmp_path, monkeypatch, "method.optim.lr=200",
             "trainer.max_steps=30", poison_at=-1)
    err = capsys.readouterr().err
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert rc == 2 and "non-finite values (NaN/Inf)" in err and "at iteration 10" in err
    assert f"{last} (iteration 8) is the last good checkpoint: continue from it with " \
           "--resume auto" in err
    assert torch.load(last, weights_only=True)["uda"]["step"] == 8
    assert finite(last) and finite(tmp_path / "checkpoints" / "best.ckpt")
    assert not (tmp_path / "results.json").exists()


def test_a_non_finite_last_ckpt_is_not_called_good(tmp_path):
    from uda.nonfinite import last_good_checkpoint
    assert last_good_checkpoint(tmp_path).startswith("no good checkpoint exists (none was")
    torch.save({"state_dict": {"bn.running_var": torch.tensor([1.0, float("inf")])},
                "uda": {"step": 4}}, tmp_path / "last.ckpt")
    assert last_good_checkpoint(tmp_path) == (
        f"no good checkpoint exists: {tmp_path / 'last.ckpt'} holds non-finite values too "
        "(1 tensor(s), e.g. bn.running_var)")
    (tmp_path / "last.ckpt").write_bytes(b"truncated")
    assert last_good_checkpoint(tmp_path).startswith("no good checkpoint exists (")


class FakeStrategy:
    def __init__(self, others_bad: bool):
        self.others_bad, self.calls = others_bad, []

    def reduce_boolean_decision(self, decision, all=True):
        self.calls.append((decision, all))
        return decision or self.others_bad


@pytest.mark.parametrize("mine_bad,others_bad", [(False, False), (False, True), (True, False)])
def test_state_check_is_collective(mine_bad, others_bad):
    """Every rank enters the same reduction, whatever its own state; one bad rank stops all."""
    from types import SimpleNamespace
    from uda.nonfinite import NonFiniteStateError, check_finite_state
    module = torch.nn.Linear(2, 2)
    if mine_bad:
        module.weight.data[0, 0] = float("nan")
    trainer = SimpleNamespace(world_size=2, global_step=7, strategy=FakeStrategy(others_bad))
    if mine_bad or others_bad:
        with pytest.raises(NonFiniteStateError) as e:
            check_finite_state(trainer, module)
        assert ("(weight)" if mine_bad else "the model state of another rank") in str(e.value)
    else:
        check_finite_state(trainer, module)
    assert trainer.strategy.calls == [(mine_bad, False)]


def test_nan_loss_skipped_when_allowed(toy_root, tmp_path, monkeypatch):
    rc = run("source_only", toy_root, tmp_path, monkeypatch, "trainer.max_nonfinite_skips=1")
    assert rc == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["step"] == 6
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.ddp
def test_two_ranks_stop_together_on_non_finite_state(toy_root, tmp_path, monkeypatch, capsys):
    """ddp_fork: both ranks take the collective decision (no hang), nothing is checkpointed,
    and the worker's error reaches the CLI as itself: one line, exit 2."""
    rc = run("source_only", toy_root, tmp_path, monkeypatch, "method.optim.lr=1e4",
             "trainer.val_every=6", "trainer.devices=2", "trainer.strategy=ddp_fork",
             "trainer.accelerator=cpu", poison_at=-1)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("uda: error: non-finite values (NaN/Inf) in ")
    assert "no good checkpoint exists" in err and not list(tmp_path.rglob("*.ckpt"))


def test_worker_errors_are_raised_again_as_themselves():
    from torch.multiprocessing import ProcessRaisedException

    from datamodules.image_io import DatasetError
    from uda.nonfinite import NonFiniteStateError
    from uda.train import worker_error

    def raised(last_line):
        return ProcessRaisedException(f"\n\n-- Process 1 terminated with the following error:\n"
                                      f"Traceback (most recent call last):\n  File ...\n"
                                      f"{last_line}\n", 1, 1234)

    e = worker_error(raised("uda.nonfinite.NonFiniteStateError: non-finite values at 6; x"))
    assert type(e) is NonFiniteStateError and str(e) == "non-finite values at 6; x"
    e = worker_error(raised("datamodules.image_io.DatasetError: /d/a.png: cannot decode image"))
    assert type(e) is DatasetError and str(e) == "/d/a.png: cannot decode image"
    other = raised("ZeroDivisionError: division by zero")
    assert worker_error(other) is other
    plain = KeyError("k")
    assert worker_error(plain) is plain


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
            *{SHRINK!r}])
        module, dm = build.build_module(cfg), build.build_datamodule(cfg)
        trainer = build.build_trainer(cfg, cfg.run.dir, [Die()], 1)
        trainer.fit(module, datamodule=dm)
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert r.returncode != 0  # ended (no hang) and reported the failure
