"""What commands print: a short start summary, no library adverts or misleading warnings, the
evaluation table on its own line, and one closing line saying what was written.

One tiny `uda train` runs as a subprocess (progress bar on; a validation at iteration 2 inside
fit, the final-weights one after it), so stdout+stderr are exactly what a user sees; the other
tests reuse its checkpoint."""
import io
import logging
import os
import subprocess
import sys
import warnings

import pytest
from tqdm import tqdm

from conftest import REPO, shrink
from uda import console
from uda.cli import main

TINY = [*shrink("trainer.progress_bar"), "trainer.max_steps=3", "trainer.val_every=2",
        "logger.name=csv", "trainer.progress_bar=true"]


@pytest.fixture(scope="module")
def tiny_run(toy_root, tmp_path_factory):
    """(run dir, stdout+stderr lines split on newlines) of one tiny toy run."""
    run_dir = tmp_path_factory.mktemp("console") / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "uda", "train", "--config",
                        str(REPO / "configs/toy/source_only.yaml"),
                        f"data.source.root={toy_root / 'source'}",
                        f"data.target.root={toy_root / 'target'}", f"run.dir={run_dir}", *TINY],
                       cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=300)
    out = r.stdout.decode()  # bytes: the bars' carriage returns are kept
    assert r.returncode == 0, out
    return run_dir, out.split("\n")


def test_train_starts_with_a_short_summary_naming_the_run_dir(tiny_run):
    run_dir, lines = tiny_run
    start = lines[:next(i for i, line in enumerate(lines) if "\r" in line)]  # before the bar
    assert 5 <= len(start) <= 15, start
    assert start[0] == "uda: train source_only, model small (width 8), seed 0"
    assert any(f"run dir {run_dir} " in line for line in start)
    assert any("source  gta5" in line and "(train: 12 images)" in line for line in start)
    assert any("val: 5 images" in line for line in start)
    assert any("crop 32x64 (source), 32x64 (target), batch 2; 3 iterations" in line
               for line in start)
    assert any("devices 1 x cpu, precision 32-true" in line for line in start)
    assert not any("resolved config ---" in line for line in lines)  # only with --print-config


def test_train_prints_no_adverts_device_lines_or_library_warnings(tiny_run):
    _, lines = tiny_run
    text = "\n".join(lines)
    for noise in ("Tip", "GPU available", "TPU available", "HPU available", "LOCAL_RANK",
                  "litlogger", "litmodels", "deprecated", "Deprecation", "FutureWarning",
                  "on_after_batch_transfer", "Warning", "`Trainer.fit` stopped"):
        assert noise not in text, noise


def test_the_table_starts_on_its_own_line_and_the_run_ends_with_one_summary(tiny_run):
    run_dir, lines = tiny_run
    assert sum(line == "class             IoU %" for line in lines) == 1
    table = lines.index("class             IoU %")
    assert lines[table + 20].startswith("mIoU ")  # 19 classes follow the header
    assert lines[-1] == ""  # the output ends with a newline
    assert lines[-3].startswith("target mIoU (final weights, cityscapes val, 5 images): ")
    assert lines[-3].endswith(f"; results written to {run_dir / 'results.json'}")
    assert lines[-2].startswith(f"uda: run {run_dir} done: best.ckpt (val mIoU ")
    assert "last.ckpt (iteration 3)" in lines[-2] and "in results.json" in lines[-2]


def test_predict_ends_with_its_count(tiny_run, toy_root, tmp_path, capsys):
    run_dir, _ = tiny_run
    out = tmp_path / "pred"
    rc = main(["predict", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"),
               "--input", str(toy_root / "target" / "leftImg8bit" / "val"), "--output", str(out),
               "--format", "labelIds"])
    assert rc == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"uda: 5 predictions (labelIds) written to {out}"
    assert len(list(out.rglob("*.png"))) == 5


def test_evaluate_ends_with_the_miou_and_its_output_file(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"),
               "--output", str(out), "trainer.progress_bar=false"])
    assert rc == 0 and out.is_file()
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("pixel accuracy ") and "class             IoU %" in lines
    assert lines[-1].startswith("target mIoU (") and lines[-1].endswith(f"written to {out}")


def test_only_the_named_library_messages_are_filtered():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        console.quiet_library_noise()
        warnings.warn("You have overridden `on_after_batch_transfer` in `LightningModule` but "
                      "have passed in a `LightningDataModule`. It will use the implementation "
                      "from `LightningModule` instance.", UserWarning)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("Found 10 module(s) in eval mode at the start of training. This may lead "
                      "to unexpected behavior during training.", UserWarning)
        warnings.warn("You have overridden `on_after_batch_transfer` in both `LightningModule` "
                      "and `LightningDataModule`.", UserWarning)
        warnings.warn("W&B logger unavailable", RuntimeWarning)
        warnings.warn("something else is deprecated", FutureWarning)
        for key in ("val/mIoU", "val_iou/car", "val_translation/fcn_score", "train/loss_seg"):
            warnings.warn(f"It is recommended to use `self.log('{key}', ..., sync_dist=True)` "
                          "when logging on epoch level in distributed setting", UserWarning)
    assert [str(w.message) for w in seen] == [
        "You have overridden `on_after_batch_transfer` in both `LightningModule` and "
        "`LightningDataModule`.", "W&B logger unavailable", "something else is deprecated",
        "It is recommended to use `self.log('train/loss_seg', ..., sync_dist=True)` when "
        "logging on epoch level in distributed setting"]
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    kept: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: kept.append(record.getMessage())
    logger.addHandler(handler)
    try:
        for message in ("GPU available: False, used: False", "💡 Tip: try litlogger",
                        "TPU available: False, using: 0 TPU cores",
                        "Restoring states from the checkpoint path at x.ckpt",
                        "an unrelated line: GPU available: True"):
            logger.warning(message)
    finally:
        logger.removeHandler(handler)
    assert kept == ["an unrelated line: GPU available: True"]


def test_write_starts_on_its_own_line_under_an_active_progress_bar(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    bar = tqdm(total=3, file=sys.stdout, desc="Epoch 0")
    bar.update(1)
    console.write("class             IoU %\nroad 1.00")
    bar.close()
    lines = out.getvalue().split("\n")
    i = lines.index("class             IoU %")
    assert lines[i + 1] == "road 1.00" and "Epoch 0" in lines[i - 1]
    out.truncate(0), out.seek(0)
    console.write("no bar")  # nothing drawn: a plain print
    assert out.getvalue() == "no bar\n"


def test_only_modules_evaluated_by_mistake_are_named():
    from torch import nn

    from uda.models.modes import unintended_eval_modules
    from uda.models.perceptual import PerceptualNet

    frozen = PerceptualNet("lite", "relu3_1", ("relu1_1",))  # its train() keeps it in eval
    net = nn.ModuleDict({"seg": nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)),
                         "perceptual": frozen})
    assert unintended_eval_modules(net) == []
    net["seg"][1].eval()
    assert unintended_eval_modules(net) == ["seg.1"]
    assert not net["seg"][1].training and net["seg"][0].training  # modes left as they were
    assert not net["perceptual"].training
