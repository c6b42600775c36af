"""`uda translate`: source set in the target style, same layout, labels copied byte for byte."""
import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from datamodules.datasets import GTA5Dataset
from uda.cli import main

SHRINK = ["data.num_workers=0", "data.batch_size=2", "data.source_transform.crop=[32,64]",
          "data.target_transform.crop=[32,64]", "model.width=8", "method.dranet.width=8",
          "method.dranet.d_width=8", "trainer.max_steps=2", "trainer.progress_bar=false"]


def train(method, toy_root, run):
    assert main(["train", "--config", str(REPO / f"configs/toy/{method}.yaml"),
                 f"data.source.root={toy_root / 'source'}",
                 f"data.target.root={toy_root / 'target'}", f"run.dir={run}", *SHRINK]) == 0
    return run / "checkpoints" / "last.ckpt"


def test_translate_writes_same_layout_with_original_labels(toy_root, tmp_path):
    ckpt = train("dranet", toy_root, tmp_path / "run")
    out = tmp_path / "translated"
    assert main(["translate", "--checkpoint", str(ckpt), "--input", str(toy_root / "source"),
                 "--output", str(out), "--num-styles", "3"]) == 0
    src, dst = GTA5Dataset(toy_root / "source"), GTA5Dataset(out)
    assert [s.name for s in src.samples] == [s.name for s in dst.samples]
    for a, b in zip(src.samples, dst.samples):
        assert a.label.read_bytes() == b.label.read_bytes()
        ia, ib = np.asarray(Image.open(a.image)), np.asarray(Image.open(b.image))
        assert ia.shape == ib.shape and not np.array_equal(ia, ib)
    assert main(["data", "check", "--dataset", "gta5", "--root", str(out), "--split", "train"]) == 0


def test_translate_needs_a_dranet_checkpoint(toy_root, tmp_path, capsys):
    ckpt = train("source_only", toy_root, tmp_path / "run")
    assert main(["translate", "--checkpoint", str(ckpt), "--input", str(toy_root / "source"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "translate needs a DRANet checkpoint" in capsys.readouterr().err
