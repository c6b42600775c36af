"""uda.logging_setup: W&B mode resolution, offline W&B runs read back from disk, the CSV fallback,
CSV / TensorBoard / none loggers and image panels. No network: W&B runs offline only."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from uda import logging_setup as ls
from uda import panels

WANDB_VARS = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL",
              "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR",
              "WANDB_ARTIFACT_DIR", "WANDB_SERVICE", "NETRC")
CLASSES = ["road", "sidewalk", "car"]


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A fresh HOME, no W&B credentials, WANDB_MODE=offline; every W&B variable that the code
    under test (or wandb itself: WANDB_SERVICE) sets is restored afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    for var in WANDB_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    yield home
    import sys
    if "wandb" in sys.modules:  # stop wandb's service process and forget its settings
        wandb = sys.modules["wandb"]
        wandb.finish()
        wandb.teardown()


# ----------------------------------------------------------------------------------------------
# resolve_wandb_mode
# ----------------------------------------------------------------------------------------------

def test_resolve_mode_explicit_and_invalid(env):
    for mode in ("online", "offline", "disabled"):
        assert ls.resolve_wandb_mode(mode) == mode
    with pytest.raises(ValueError, match="auto"):
        ls.resolve_wandb_mode("cloud")


def test_resolve_auto_without_credentials_is_offline(env, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    assert ls.resolve_wandb_mode("auto") == "offline"


def test_resolve_auto_with_credentials_is_online(env, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # never used: no run is started here
    assert ls.resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # an explicit WANDB_MODE wins over credentials
    assert ls.resolve_wandb_mode("auto") == "offline"


def test_resolve_auto_reads_netrc_and_settings(env, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    netrc = env / ".netrc"
    netrc.write_text("machine example.org\n  login user\n  password secret\n")
    netrc.chmod(0o600)
    assert ls.resolve_wandb_mode("auto") == "offline"  # not the W&B host
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert ls.resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.mycompany.com")
    assert ls.resolve_wandb_mode("auto") == "offline"  # key is for another host
    netrc.unlink()
    settings = env / ".config" / "wandb" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text("[default]\napi_key = " + "k" * 40 + "\n")
    assert ls.resolve_wandb_mode("auto") == "online"


# ----------------------------------------------------------------------------------------------
# A tiny Lightning run
# ----------------------------------------------------------------------------------------------

class TinyModule(pl.LightningModule):
    """One 1x1 convolution; logs val/mIoU = 42.5, the per-class IoU table and has panels."""

    def __init__(self):
        super().__init__()
        self.net = nn.Conv2d(3, len(CLASSES), 1)
        self.last_results = None

    def training_step(self, batch, batch_idx):
        return self.net(batch["image"]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def panel_images(self, batch):
        assert not self.training and not torch.is_grad_enabled()
        x = batch["image"]
        return {"source": torch.sigmoid(x), "translated": torch.sigmoid(-x)}

    def predict_labels(self, images, size):
        logits = F.interpolate(self.net(images), size=size, mode="bilinear", align_corners=False)
        return logits.argmax(1)

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        self.last_results = {"mIoU": 42.5,
                             "per_class_iou": {"road": 90.25, "sidewalk": None, "car": 37.5}}
        self.log("val/mIoU", self.last_results["mIoU"])
        panels.log_iou_table(self.trainer.loggers, self.last_results, self.global_step)


def _loaders():
    g = torch.Generator().manual_seed(0)
    train = [{"image": torch.randn(3, 8, 12, generator=g)} for _ in range(8)]
    val = []
    for i in range(4):
        mask = torch.randint(0, len(CLASSES), (16, 24), generator=g)
        mask[:2] = 255
        val.append({"image": torch.randn(3, 8, 12, generator=g), "mask": mask, "name": f"im{i}"})
    return DataLoader(train, batch_size=2), DataLoader(val, batch_size=2)


def _fit(logger, run_dir: Path, every_n_steps: int = 2) -> TinyModule:
    module = TinyModule()
    trainer = pl.Trainer(max_steps=4, max_epochs=1, logger=logger, accelerator="cpu",
                         log_every_n_steps=1, num_sanity_val_steps=0, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(run_dir),
                         callbacks=[panels.PanelLogger(every_n_steps=every_n_steps, max_images=3)])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(module, *_loaders())
    return module


def read_complete_wandb_records(path: Path, timeout_s: float = 60.0) -> list:
    """`read_wandb_records` once the run's "exit" record is in the file: under load, wandb's
    service process can still be writing the file when `wandb.finish()` has returned (seen in
    CI: the file read then held no "run" record yet)."""
    import time
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            records = read_wandb_records(path)
        except Exception:  # a record still being written
            if time.monotonic() > deadline:
                raise
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def read_wandb_records(path: Path) -> list:
    """Decode an offline `run-<id>.wandb` file: a 7-byte header (":W&B", 0xBEE1, version) then
    the LevelDB log format (32 KiB blocks of records: crc32 (4), length (2, LE), type (1:
    full, 2: first, 3: middle, 4: last)), each payload a `wandb_internal_pb2.Record`."""
    from wandb.proto import wandb_internal_pb2
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, payloads, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:  # zero padding
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
    return [wandb_internal_pb2.Record.FromString(p) for p in payloads]


def _items(items) -> dict:
    """History / config items -> {"a/b": value}; a nested key ("panels/x", "filenames") is
    joined with "/"."""
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def test_wandb_offline_run_is_written_under_run_dir(env, tmp_path, capsys):
    import wandb
    run_dir = tmp_path / "run"
    logger = ls.create_logger("wandb", run_dir, project="uda-test", name="tiny", group="g",
                              tags=["toy"], mode="auto", config={"lr": 0.01, "method": "tiny"})
    assert isinstance(logger, pl.loggers.WandbLogger)
    offline = ls.offline_run_dir(logger)
    assert offline is not None and offline.parent == (run_dir / "wandb").resolve()
    assert f"wandb sync {offline}" in capsys.readouterr().out
    _fit(logger, run_dir)
    ls.close_logger(logger)
    assert wandb.run is None

    # history and config: decoded from the binary run file
    (run_file,) = offline.glob("run-*.wandb")
    records = read_complete_wandb_records(run_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    (run,) = [r.run for r, k in zip(records, kinds) if k == "run"]
    assert (run.project, run.display_name, run.run_group, list(run.tags)) == \
        ("uda-test", "tiny", "g", ["toy"])
    config = _items(run.config.update)
    assert (config["lr"], config["method"]) == (0.01, "tiny")
    history = [_items(r.history.item) for r, k in zip(records, kinds) if k == "history"]
    assert any(h.get("val/mIoU") == 42.5 for h in history), history
    assert any("val/per_class_iou/_type" in h for h in history)
    (val_panel,) = [h for h in history if "panels/val_prediction/filenames" in h]
    assert val_panel["panels/val_prediction/captions"] == ["im0", "im1"]
    assert sum("panels/source/filenames" in h for h in history) == 2  # steps 2 and 4

    # table and images: plain files of the run
    files = offline / "files"
    (table,) = (files / "media" / "table" / "val").glob("per_class_iou*.table.json")
    t = json.loads(table.read_text())
    assert t["columns"] == ["class", "IoU"]
    assert t["data"] == [["road", 90.25], ["sidewalk", None], ["car", 37.5]]
    val_pngs = [files / f for f in val_panel["panels/val_prediction/filenames"]]
    assert len(val_pngs) == 2  # the first validation batch (2 images; max_images=3)
    for png in val_pngs:
        assert Image.open(png).size == (3 * 24, 16)  # [input | prediction | ground truth]
    assert list((files / "media" / "images" / "panels").glob("source*.png"))
    assert list((files / "media" / "images" / "panels").glob("translated*.png"))

    # nothing of W&B under HOME; its cache / data dirs live in the run directory
    assert [p for p in env.rglob("*") if "wandb" in str(p).lower()] == []
    assert (run_dir / "wandb" / "cache").is_dir()


def test_wandb_failure_falls_back_to_csv(env, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(pl.loggers, "WandbLogger", broken)
    with pytest.warns(RuntimeWarning, match="unreachable.*CSV"):
        logger = ls.create_logger("wandb", tmp_path, project="p", name=None, group=None, tags=[])
    assert isinstance(logger, pl.loggers.CSVLogger)
    assert Path(logger.log_dir) == tmp_path / "logs"


def test_wandb_init_failure_falls_back_to_csv(env, tmp_path, monkeypatch):
    import wandb

    def init(*args, **kwargs):
        raise wandb.errors.CommError("network is down")

    monkeypatch.setattr(wandb, "init", init)
    with pytest.warns(RuntimeWarning, match="CommError: network is down"):
        logger = ls.create_logger("wandb", tmp_path, project="p", name="n", group=None, tags=[],
                                  mode="online")
    assert isinstance(logger, pl.loggers.CSVLogger)


def test_wandb_non_zero_rank_creates_no_run(env, tmp_path, monkeypatch):
    import wandb

    def init(*args, **kwargs):
        raise AssertionError("wandb.init called on a non-zero rank")

    monkeypatch.setattr(wandb, "init", init)
    logger = ls.create_logger("wandb", tmp_path, project="p", name="n", group=None, tags=[],
                              is_rank_zero=False)
    assert isinstance(logger, pl.loggers.WandbLogger) and logger._experiment is None
    assert not (tmp_path / "wandb").exists() or not list((tmp_path / "wandb").glob("*run-*"))


# ----------------------------------------------------------------------------------------------
# CSV, TensorBoard, none
# ----------------------------------------------------------------------------------------------

def test_none_and_unknown_kind(env, tmp_path):
    assert ls.create_logger("none", tmp_path, project="p", tags=[]) is False
    with pytest.raises(ValueError, match="tensorboard"):
        ls.create_logger("mlflow", tmp_path, project="p", tags=[])


def test_csv_logger_metrics_table_and_png_panels(env, tmp_path):
    logger = ls.create_logger("csv", tmp_path, project="p", tags=[])
    assert isinstance(logger, pl.loggers.CSVLogger)
    _fit(logger, tmp_path)
    rows = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"val/mIoU", "val_iou/road", "val_iou/car"} <= set(header)
    assert "val_iou/sidewalk" not in header  # None is skipped
    values = [dict(zip(header, r.split(","))) for r in rows[1:]]
    assert any(v["val_iou/road"] == "90.25" for v in values)
    png_dir = tmp_path / "panels"
    assert sorted(p.name for p in (png_dir / "source").glob("*.png")) == ["step2.png", "step4.png"]
    assert (png_dir / "translated" / "step4.png").is_file()
    val = np.asarray(Image.open(png_dir / "val_prediction" / "step4.png"))
    assert val.shape == (2 * 16, 3 * 24, 3)  # two images, one row each
    # ignored ground-truth rows keep the input image; labelled ones are palette-blended
    assert np.array_equal(val[:2, 48:], val[:2, :24])
    assert not np.array_equal(val[2:16, 48:], val[2:16, :24])
    src = np.asarray(Image.open(png_dir / "source" / "step2.png"))
    assert src.shape == (2 * 8, 12, 3)


def test_tensorboard_logger(env, tmp_path):
    pytest.importorskip("tensorboard")  # not an install requirement of uda
    logger = ls.create_logger("tensorboard", tmp_path, project="p", tags=[], config={"lr": 0.1})
    assert isinstance(logger, pl.loggers.TensorBoardLogger)
    _fit(logger, tmp_path)
    logger.experiment.flush()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "val/mIoU" in tags["scalars"] and "val_iou/road" in tags["scalars"]
    assert acc.Scalars("val/mIoU")[-1].value == 42.5
    assert {"panels/val_prediction", "panels/source"} <= set(tags["images"])
    assert not (tmp_path / "panels").exists()  # images went to TensorBoard, not PNG files


def test_uda_train_with_wandb_offline_logs_metrics_table_and_panels(env, toy_root, tmp_path):
    """Acceptance: the real `uda train` (toy DRANet) with logger.name=wandb in offline mode."""
    from conftest import REPO, SHRINK
    from uda.cli import main
    run_dir = tmp_path / "run"
    rc = main(["train", "--config", str(REPO / "configs/toy/dranet.yaml"),
               f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}",
               f"run.dir={run_dir}", "trainer.max_steps=4", "trainer.val_every=2",
               "trainer.log_every=1", *SHRINK, "logger.name=wandb", "logger.mode=auto",
               "logger.panels_every=2", "logger.project=uda-toy", "logger.tags=[toy,test]",
               "logger.log_checkpoints=true"])
    assert rc == 0
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (run_file,) = offline.glob("run-*.wandb")
    records = read_complete_wandb_records(run_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    (run,) = [r.run for r, k in zip(records, kinds) if k == "run"]
    assert run.project == "uda-toy" and list(run.tags) == ["toy", "test"]
    assert _items(run.config.update)["method"]["name"] == "dranet"
    history = [_items(r.history.item) for r, k in zip(records, kinds) if k == "history"]
    results = json.loads((run_dir / "results.json").read_text())
    mious = [h["val/mIoU"] for h in history if "val/mIoU" in h]
    assert len(mious) >= 2 and mious[-1] == pytest.approx(results["mIoU"])
    assert any("train/loss_d" in h and "train/style" in h for h in history)
    files = offline / "files"
    # per_class_iou_<wandb step>_<hash>.table.json: the last one by step, not by name
    tables = sorted((files / "media" / "table" / "val").glob("per_class_iou*.table.json"),
                    key=lambda p: int(p.name.split("_")[3]))
    assert tables
    last = json.loads(tables[-1].read_text())
    assert last["columns"] == ["class", "IoU"] and len(last["data"]) == 19
    by_class = dict((c, v) for c, v in last["data"])
    assert all((by_class[c] is None) == (results["per_class_iou"][c] is None) for c in by_class)
    media = files / "media" / "images" / "panels"
    for key in ("source_to_target", "target_to_source", "val_prediction"):
        assert list(media.glob(f"{key}*.png")), key
    assert [p for p in env.rglob("*") if "wandb" in str(p).lower()] == []
    ours = [r.artifact for r, k in zip(records, kinds)
            if k == "artifact" and r.artifact.name.startswith("model-")]
    assert ours and all(a.type == "model" for a in ours)
    assert any("last" in list(a.aliases) for a in ours)
    assert any("best" in list(a.aliases) for a in ours)
