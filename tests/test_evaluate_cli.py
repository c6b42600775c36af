"""`uda evaluate`, `uda predict` and `uda evaluate-dir` on a checkpoint trained in the test."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import CROPS, REPO, shrink
from uda.cli import main


@pytest.fixture(scope="module")
def trained(toy_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    rc = main(["train", "--config", str(REPO / "configs/toy/source_only.yaml"),
               f"data.source.root={toy_root / 'source'}",
               f"data.target.root={toy_root / 'target'}", f"run.dir={run}",
               "trainer.max_steps=3", *shrink(*CROPS)])
    assert rc == 0
    return run


def test_evaluate_reproduces_training_results_and_exports(trained, toy_root, tmp_path, capsys):
    out, export = tmp_path / "r.json", tmp_path / "export"
    rc = main(["evaluate", "--checkpoint", str(trained / "checkpoints/last.ckpt"), "--output",
               str(out), "--export", str(export), "trainer.progress_bar=false"])
    assert rc == 0
    results = json.loads(out.read_text())
    train_results = json.loads((trained / "results.json").read_text())
    assert results["confusion_matrix"] == train_results["confusion_matrix"]
    assert results["mIoU"] == train_results["mIoU"] and results["num_images"] == 5
    assert len(list((export / "labelIds").glob("*_labelIds.png"))) == 5
    assert len(list((export / "color").glob("*_color.png"))) == 5
    # the exported labelIds, scored offline, give the same confusion matrix
    out2 = tmp_path / "r2.json"
    assert main(["evaluate-dir", "--pred", str(export / "labelIds"), "--gt-root",
                 str(toy_root / "target"), "--output", str(out2)]) == 0
    assert json.loads(out2.read_text())["confusion_matrix"] == results["confusion_matrix"]


@pytest.mark.ddp
@pytest.mark.parametrize("strategy", ["ddp_fork", "auto"])
def test_two_process_evaluate_equals_single_process(trained, tmp_path, strategy):
    single, double = tmp_path / "1.json", tmp_path / "2.json"
    ckpt = str(trained / "checkpoints/last.ckpt")
    assert main(["evaluate", "--checkpoint", ckpt, "--output", str(single),
                 "trainer.progress_bar=false"]) == 0
    assert main(["evaluate", "--checkpoint", ckpt, "--output", str(double),
                 "trainer.progress_bar=false", "trainer.devices=2",
                 f"trainer.strategy={strategy}", "data.val_batch_size=1"]) == 0
    a, b = json.loads(single.read_text()), json.loads(double.read_text())
    assert b["num_images"] == 5  # odd count: 3 + 2 images, none duplicated
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["mIoU"] == b["mIoU"]


@pytest.mark.parametrize("strategy,start", [("auto", "fork"), ("ddp", "popen"),
                                            ("ddp_spawn", "spawn")])
def test_evaluate_uses_the_training_strategy(trained, monkeypatch, strategy, start):
    """Several devices get the project's DDP (process-group timeout), as in training."""
    from pytorch_lightning.strategies import DDPStrategy

    import pytorch_lightning as pl

    class Stop(Exception):
        pass

    def trainer(**kwargs):
        seen.update(kwargs)
        raise Stop

    seen = {}
    monkeypatch.setattr(pl, "Trainer", trainer)
    with pytest.raises(Stop):
        main(["evaluate", "--checkpoint", str(trained / "checkpoints/last.ckpt"),
              "trainer.accelerator=cpu", "trainer.devices=2", f"trainer.strategy={strategy}",
              "trainer.ddp_timeout_s=91"])
    s = seen["strategy"]
    assert isinstance(s, DDPStrategy) and s._start_method == start
    assert s._timeout.total_seconds() == 91 and seen["devices"] == 2


def test_evaluate_with_flip_and_slide_protocols(trained, tmp_path):
    out = tmp_path / "r.json"
    assert main(["evaluate", "--checkpoint", str(trained / "checkpoints/last.ckpt"), "--output",
                 str(out), "trainer.progress_bar=false", "eval.mode=slide", "eval.crop=[64,128]",
                 "eval.stride=[48,96]", "eval.flip=true", "eval.scales=[0.75,1.0]"]) == 0
    r = json.loads(out.read_text())
    assert r["num_images"] == 5 and np.array(r["confusion_matrix"]).sum() > 0


@pytest.mark.parametrize("fmt", ["labelIds", "trainIds", "color", "overlay"])
def test_predict_formats(trained, toy_root, tmp_path, fmt):
    pattern = str(toy_root / "target/leftImg8bit/val/*/*_leftImg8bit.png")
    assert main(["predict", "--checkpoint", str(trained / "checkpoints/last.ckpt"), "--input",
                 pattern, "--output", str(tmp_path), "--format", fmt]) == 0
    files = sorted(tmp_path.glob(f"*_{fmt}.png"))
    assert len(files) == 5 and files[0].name.startswith("toycity_")
    with Image.open(files[0]) as im:
        assert im.size == (256, 128) and im.mode == ("L" if "Ids" in fmt else "RGB")


def test_predict_equals_evaluate_export(trained, toy_root, tmp_path):
    ckpt = str(trained / "checkpoints/last.ckpt")
    main(["evaluate", "--checkpoint", ckpt, "--export", str(tmp_path / "ev"),
          "trainer.progress_bar=false"])
    main(["predict", "--checkpoint", ckpt, "--input", str(toy_root / "target/leftImg8bit/val"),
          "--output", str(tmp_path / "pr"), "--format", "labelIds"])
    for f in (tmp_path / "ev" / "labelIds").glob("*.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(f)),
                                      np.asarray(Image.open(tmp_path / "pr" / f.name)))


def test_bad_checkpoints_give_clear_errors(trained, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes((trained / "checkpoints/last.ckpt").read_bytes()[:1000])
    assert main(["evaluate", "--checkpoint", str(bad)]) == 2
    assert "bad.ckpt: cannot read checkpoint" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(trained / "checkpoints/last.ckpt"),
                 "model.width=16"]) == 2
    assert "weights do not fit the configured model" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(trained / "checkpoints/last.ckpt"), "--input",
                 str(tmp_path / "nothing*.png"), "--output", str(tmp_path)]) == 2
    assert "no input images" in capsys.readouterr().err
