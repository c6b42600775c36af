"""Exact resume: N iterations + SIGTERM + `--resume auto` to 2N == 2N uninterrupted (CPU,
deterministic), for a one-optimizer and a three-optimizer recipe; resume errors."""
import os
import signal

import pytest
import torch

import uda.build
from conftest import REPO, SHRINK, kill_at
from uda.cli import main
from uda.config import ConfigError, load_config
from uda.train import train

TINY = [*SHRINK, "data.source_transform.jitter=0.2", "trainer.deterministic=true",
        "trainer.max_steps=6", "trainer.val_every=2"]


DEBIAS = ["data.debias.lff.enabled=true", "data.debias.cutmix.enabled=true",
          "data.debias.mixup.enabled=true"]


def cfg_for(method, toy_root, run_dir):
    name, _, variant = method.partition("+")
    return load_config(REPO / f"configs/toy/{name}.yaml", [
        f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}",
        f"run.dir={run_dir}", *TINY, *(DEBIAS if variant == "debias" else [])])


def params(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.parametrize("method", ["source_only", "dranet", "self_training+debias"])
def test_interrupted_and_resumed_equals_uninterrupted(toy_root, tmp_path, method, monkeypatch):
    full = train(cfg_for(method, toy_root, tmp_path / "a"))
    assert full["step"] == 6

    original = uda.build.build_trainer
    monkeypatch.setattr(uda.build, "build_trainer",
                        lambda *a, **k: _with(original(*a, **k), kill_at(3)))
    part = train(cfg_for(method, toy_root, tmp_path / "b"))
    assert part == {"interrupted": True, "step": 3}
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["uda"]["step"] == 3
    monkeypatch.setattr(uda.build, "build_trainer", original)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    resumed = train(cfg_for(method, toy_root, tmp_path / "b"), resume="auto")
    assert resumed["step"] == 6
    a, b = params(tmp_path / "a"), params(tmp_path / "b")
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"resumed run differs from the uninterrupted one: {differ[:5]}"
    assert resumed["confusion_matrix"] == full["confusion_matrix"]
    if method.endswith("+debias"):  # teacher, biased net (in params) and LfF statistics
        assert any(k.startswith("teacher.") for k in a) and any(k.startswith("biased.") for k in a)
        sa, sb = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
                  for d in (tmp_path / "a", tmp_path / "b"))
        assert sa["lff"]["updated"].any()
        assert all(torch.equal(sa["lff"][k], sb["lff"][k]) for k in ("ema_b", "ema_d", "updated"))


def _with(trainer, callback):
    trainer.callbacks.insert(0, callback)  # before GracefulStop looks at the iteration
    return trainer


def test_resume_errors(toy_root, tmp_path, capsys):
    run = tmp_path / "r"
    train(cfg_for("source_only", toy_root, run))
    base = ["train", "--config", str(REPO / "configs/toy/adversarial.yaml"),
            f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}",
            f"run.dir={run}", *TINY]
    assert main([*base, "--resume", "auto"]) == 2
    assert "cannot resume: checkpoint has method.name='source_only'" in capsys.readouterr().err
    base[2] = str(REPO / "configs/toy/source_only.yaml")
    assert main([*base, "--resume", "auto"]) == 2  # already at max_steps
    assert "already at iteration 6" in capsys.readouterr().err
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert main([*base, "--resume", str(bad)]) == 2
    assert "bad.ckpt: cannot read checkpoint" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--resume auto needs run.dir"):
        cfg = cfg_for("source_only", toy_root, run)
        cfg.run.dir = None
        monkeypatch_env = os.environ.pop("UDA_RUN_DIR", None)
        try:
            train(cfg, resume="auto")
        finally:
            if monkeypatch_env:
                os.environ["UDA_RUN_DIR"] = monkeypatch_env
