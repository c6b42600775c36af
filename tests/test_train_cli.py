"""End to end through the real configs, shrunk: tiny toy data, a few steps, tmp run dir."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import CROPS, REPO, shrink
from datamodules.datasets import CityscapesDataset, GTA5Dataset
from datamodules.labels import CLASS_NAMES
from uda.cli import main
from uda.config import load_config


def toy_overrides(toy_root, run_dir, steps=4):
    return [f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}",
            f"run.dir={run_dir}", f"trainer.max_steps={steps}", "trainer.val_every=2",
            *shrink(*CROPS)]


def test_toy_files_load_through_the_real_dataset_classes(toy_root):
    src = GTA5Dataset(toy_root / "source")
    tr = CityscapesDataset(toy_root / "target", "train")
    va = CityscapesDataset(toy_root / "target", "val")
    assert (len(src), len(tr), len(va)) == (12, 12, 5)
    seen = set()
    for ds in (src, tr, va):
        image, mask = ds.load(0)
        assert image.shape == (128, 256, 3) and mask.shape == (128, 256)
        assert set(np.unique(mask).tolist()) <= set(range(19)) | {255}
        seen |= set(np.unique(mask).tolist())
    assert len(seen - {255}) >= 6


def test_train_source_only_end_to_end(toy_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = main(["train", "--config", str(REPO / "configs/toy/source_only.yaml"), "--print-config",
               *toy_overrides(toy_root, run_dir)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "target mIoU (final weights" in out
    dump = out.split("--- resolved config ---\n")[1].split("\n---\n")[0]  # --print-config
    assert OmegaConf.create(dump).trainer.max_steps == 4
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) >= {"mIoU", "per_class_iou", "pixel_accuracy", "num_images",
                            "confusion_matrix"}
    assert results["num_images"] == 5 and results["step"] == 4
    assert list(results["per_class_iou"]) == list(CLASS_NAMES)
    cm = np.array(results["confusion_matrix"])
    assert cm.shape == (19, 19) and cm.sum() > 0.9 * 5 * 128 * 256
    assert 0.0 <= results["mIoU"] <= 100.0
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.trainer.max_steps == 4 and saved.run.dir == str(run_dir)
    for kind in ("last", "best"):
        ckpt = torch.load(run_dir / "checkpoints" / f"{kind}.ckpt", weights_only=True)
        assert ckpt["uda"]["kind"] == kind and "trainer:" in ckpt["uda"]["config"]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    assert not list((run_dir / "checkpoints").glob(".*tmp"))
    assert (run_dir / "logs" / "metrics.csv").is_file()


def test_oracle_reads_target_labels_and_adaptation_never_does(toy_root, tmp_path):
    from uda.build import build_datamodule
    base = toy_overrides(toy_root, tmp_path)
    dm = build_datamodule(load_config(REPO / "configs/toy/oracle.yaml", base))
    assert isinstance(dm.source_train, CityscapesDataset) and dm.source_train.labelled
    assert not dm.target_train.labelled
    dm = build_datamodule(load_config(REPO / "configs/toy/source_only.yaml", base))
    assert isinstance(dm.source_train, GTA5Dataset) and not dm.target_train.labelled
    assert "mask" not in dm.target_train[0]


def test_train_reports_config_errors_cleanly(toy_root, tmp_path, capsys):
    rc = main(["train", "--config", str(REPO / "configs/toy/source_only.yaml"), "trainer.max_step=3"])
    assert rc == 2 and "trainer.max_step" in capsys.readouterr().err
    rc = main(["train", "--config", str(REPO / "configs/toy/source_only.yaml"),
               f"data.source.root={tmp_path / 'missing'}", f"data.target.root={toy_root / 'target'}",
               f"run.dir={tmp_path / 'run'}"])
    assert rc == 2 and "missing: gta5 root directory not found" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["train"], ["data"], ["data", "make-toy"], ["data", "check"],
                                  ["evaluate-dir"], ["evaluate"], ["predict"], ["translate"],
                                  ["benchmark"], ["benchmark", "toy"]])
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0 and "usage: uda" in capsys.readouterr().out


def test_python_m_uda_and_make_toy(tmp_path):
    out = tmp_path / "toy"
    r = subprocess.run([sys.executable, "-m", "uda", "data", "make-toy", "--out", str(out),
                        "--num-source", "2", "--num-target", "2", "--num-val", "1",
                        "--size", "64x128", "--seed", "3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(list((out / "source" / "images").glob("*.png"))) == 2
    assert GTA5Dataset(out / "source").load(0)[0].shape == (64, 128, 3)
