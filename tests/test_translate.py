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


def test_benchmark_toy_table(toy_root, tmp_path, capsys):
    import json
    rc = main(["benchmark", "toy", "--seeds", "2", "--methods", "source_only,oracle",
               "--data", str(toy_root), "--out", str(tmp_path), *SHRINK])
    assert rc == 0
    rows = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(rows) == {"source_only", "oracle"}
    for r in rows.values():
        assert len(r["mIoU"]) == 2 and r["mIoU_mean"] == pytest.approx(sum(r["mIoU"]) / 2)
    seed1 = json.loads((tmp_path / "oracle" / "seed1" / "results.json").read_text())
    assert seed1["mIoU"] == rows["oracle"]["mIoU"][1]
    assert "| oracle |" in (tmp_path / "benchmark.md").read_text()


def test_benchmark_toy_reports_a_class_iou_from_a_config_dir(toy_root, tmp_path):
    import json
    rc = main(["benchmark", "toy", "--seeds", "1", "--methods", "source_only",
               "--config-dir", str(REPO / "configs/toy/cue"), "--class-iou", "car",
               "--data", str(toy_root), "--out", str(tmp_path), *SHRINK])
    assert rc == 0
    row = json.loads((tmp_path / "benchmark.json").read_text())["source_only"]
    seed0 = json.loads((tmp_path / "source_only" / "seed0" / "results.json").read_text())
    assert row["class_iou"] == [seed0["per_class_iou"]["car"] or 0.0]
    assert "car IoU" in (tmp_path / "benchmark.md").read_text()
