"""Option combinations and weights files a user may get wrong: one `uda: error:` line naming the
option(s) and the fix, exit 2, nothing written."""
import pytest
import torch

from conftest import REPO, SHRINK, shrunk_config
from uda.cli import main

TINY = [*SHRINK, "trainer.max_steps=1", "trainer.accelerator=cpu"]


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("uda: error: "), err
    return lines[0]


@pytest.mark.parametrize("command", [["data", "make-toy", "--out", "{out}"],
                                     ["benchmark", "toy", "--data", "{out}", "--out", "{out}_runs"]])
def test_cue_conflicting_needs_spurious_cue(tmp_path, capsys, command):
    out = tmp_path / "toy"
    argv = [a.format(out=out) for a in command] + ["--cue-conflicting", "0.05"]
    assert main(argv) == 2
    line = error_line(capsys.readouterr().err)
    assert "--cue-conflicting 0.05 needs --spurious-cue" in line and "add --spurious-cue" in line
    assert not out.exists() and not (tmp_path / "toy_runs").exists()


@pytest.fixture(scope="module")
def run_checkpoint(toy_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    assert main(["train", "--config", str(REPO / "configs/toy/source_only.yaml"),
                 f"data.source.root={toy_root / 'source'}",
                 f"data.target.root={toy_root / 'target'}", f"run.dir={run}", *TINY]) == 0
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("model", [["model.width=16"], ["model.name=drn_c26"]])
def test_pretrained_run_checkpoint_of_another_model_is_refused(run_checkpoint, toy_root, tmp_path,
                                                               capsys, model):
    run = tmp_path / "run"
    rc = main(["train", "--config", str(REPO / "configs/toy/source_only.yaml"),
               f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}",
               f"run.dir={run}", *TINY, *model, f"model.pretrained={run_checkpoint}"])
    line = error_line(capsys.readouterr().err)
    assert rc == 2 and line.startswith(f"uda: error: model.pretrained: {run_checkpoint} is a "
                                       "checkpoint of a uda run")
    assert f"uda train --resume {run_checkpoint}" in line
    assert f"uda evaluate --checkpoint {run_checkpoint}" in line
    assert not run.exists()


def test_pretrained_run_checkpoint_of_the_same_model_is_a_warm_start(run_checkpoint, toy_root,
                                                                     tmp_path):
    from uda import build
    cfg = shrunk_config(toy_root, tmp_path, "source_only", f"model.pretrained={run_checkpoint}")
    net = build.build_segmenter(cfg)
    saved = torch.load(run_checkpoint, weights_only=True)["state_dict"]
    own = net.state_dict()
    assert len(own) == sum(k.startswith("segmenter.") for k in saved)
    assert all(torch.equal(v, saved[f"segmenter.{k}"]) for k, v in own.items())
