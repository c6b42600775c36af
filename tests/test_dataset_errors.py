"""User-caused data errors end as one `uda: error: <file>: ...` line, exit 2, in every command,
whether the file is read in the main process or in a DataLoader worker; train and evaluate check
label values as `uda data check` does."""
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, shrink
from uda.cli import main

# without data.num_workers: its configured workers (errors raised in worker processes)
TINY = [*shrink("data.num_workers"), "trainer.max_steps=2", "trainer.accelerator=cpu"]


def one_error_line(err: str, *named: str) -> str:
    """The single `uda: error:` line of `err`; no traceback or worker wrapper around it."""
    lines = [line for line in err.splitlines() if line.startswith("uda: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Caught DatasetError" not in err, err
    for s in named:
        assert s in lines[0], (s, lines[0])
    return lines[0]


def toy_copy(toy_root, tmp_path):
    dst = tmp_path / "toy"
    shutil.copytree(toy_root, dst)
    return dst


def train(data, run, *extra):
    return main(["train", "--config", str(REPO / "configs/toy/source_only.yaml"),
                 f"data.source.root={data / 'source'}", f"data.target.root={data / 'target'}",
                 f"run.dir={run}", *TINY, *extra])


@pytest.fixture(scope="module")
def checkpoint(toy_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    assert train(toy_root, run, "data.num_workers=0") == 0
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture
def workers_exit_fast(monkeypatch):
    """A DataLoader iterator left by an exception is collected later, and torch then waits up
    to MP_STATUS_CHECK_INTERVAL (5 s) for each worker: shorten it, and collect it in this test."""
    import gc

    import torch.utils.data._utils as loader_utils
    monkeypatch.setattr(loader_utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
    yield
    gc.collect()


def val_label(data):
    return sorted((data / "target" / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))[1]


@pytest.mark.parametrize("workers", [0, 1])
def test_train_rejects_unknown_label_value(toy_root, tmp_path, capfd, workers_exit_fast, workers):
    data = toy_copy(toy_root, tmp_path)
    label = sorted((data / "source" / "labels").glob("*.png"))[0]
    arr = np.asarray(Image.open(label)).copy()
    arr[0, :3] = 200                                   # no Cityscapes label id
    Image.fromarray(arr).save(label)
    rc = train(data, tmp_path / "run", f"data.num_workers={workers}", "trainer.max_steps=6")
    line = one_error_line(capfd.readouterr().err, str(label), "unexpected label value(s) [200]",
                          "gta5 label ids (valid: 0-33, 255)")
    assert rc == 2 and line.startswith(f"uda: error: {label}: ")


def test_train_worker_error_on_a_corrupt_image(toy_root, tmp_path, capfd, workers_exit_fast):
    data = toy_copy(toy_root, tmp_path)
    image = sorted((data / "source" / "images").glob("*.png"))[1]
    image.write_bytes(b"not a png")
    rc = train(data, tmp_path / "run", "data.num_workers=1", "trainer.max_steps=6")
    one_error_line(capfd.readouterr().err, f"{image}: cannot decode image", "re-download or remove it")
    assert rc == 2


@pytest.mark.parametrize("workers", [0, 1])
def test_evaluate_rejects_unknown_label_value(checkpoint, toy_root, tmp_path, capfd,
                                              workers_exit_fast, workers):
    data = toy_copy(toy_root, tmp_path)
    label = val_label(data)
    arr = np.asarray(Image.open(label)).copy()
    arr[-1, -1] = 34
    Image.fromarray(arr).save(label)
    out = tmp_path / "r.json"
    rc = main(["evaluate", "--checkpoint", str(checkpoint), "--output", str(out),
               f"data.target.root={data / 'target'}", f"data.num_workers={workers}",
               "trainer.progress_bar=false"])
    one_error_line(capfd.readouterr().err, f"{label}: unexpected label value(s) [34] for "
                   "cityscapes labelIds")
    assert rc == 2 and not out.exists()


def test_evaluate_worker_error_on_a_corrupt_label(checkpoint, toy_root, tmp_path, capfd,
                                                  workers_exit_fast):
    data = toy_copy(toy_root, tmp_path)
    label = val_label(data)
    label.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rc = main(["evaluate", "--checkpoint", str(checkpoint), f"data.target.root={data / 'target'}",
               "data.num_workers=1", "trainer.progress_bar=false"])
    one_error_line(capfd.readouterr().err, f"{label}: cannot decode label")
    assert rc == 2


def test_a_label_of_another_size_is_resized_with_a_warning(checkpoint, toy_root, tmp_path):
    """The documented policy (README, Dataset layouts): resized (nearest), named in a warning."""
    data = toy_copy(toy_root, tmp_path)
    label = val_label(data)
    Image.open(label).resize((512, 256), Image.NEAREST).save(label)
    with pytest.warns(UserWarning) as record:
        rc = main(["evaluate", "--checkpoint", str(checkpoint), f"data.target.root={data / 'target'}",
                   "data.num_workers=0", "trainer.progress_bar=false"])
    expected = f"{label}: label size 512x256 differs from image size 256x128; resized (nearest)"
    assert rc == 0 and any(expected in str(w.message) for w in record)


def test_predict_names_a_corrupt_image(checkpoint, tmp_path, capfd):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(inputs / "a.png")
    (inputs / "b.png").write_bytes(b"garbage")
    rc = main(["predict", "--checkpoint", str(checkpoint), "--input", str(inputs),
               "--output", str(tmp_path / "out")])
    one_error_line(capfd.readouterr().err, f"{inputs / 'b.png'}: cannot decode image")
    assert rc == 2


def test_translate_names_a_corrupt_source_image(toy_root, tmp_path, capfd):
    data = toy_copy(toy_root, tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--config", str(REPO / "configs/toy/dranet.yaml"),
                 f"data.source.root={toy_root / 'source'}", f"data.target.root={toy_root / 'target'}",
                 f"run.dir={run}", "data.num_workers=0", *TINY, "trainer.max_steps=1"]) == 0
    image = sorted((data / "source" / "images").glob("*.png"))[2]
    image.write_bytes(b"garbage")
    capfd.readouterr()
    rc = main(["translate", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--input",
               str(data / "source"), "--output", str(tmp_path / "out"), "--num-styles", "2"])
    one_error_line(capfd.readouterr().err, f"{image}: cannot decode image")
    assert rc == 2


def test_evaluate_dir_names_prediction_and_class_less_id(toy_root, tmp_path, capfd):
    gts = sorted((toy_root / "target" / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    pred = tmp_path / "pred"
    pred.mkdir()
    for gt in gts:
        shutil.copy(gt, pred / gt.name.replace("_gtFine_labelIds", "_pred"))
    bad = pred / gts[3].name.replace("_gtFine_labelIds", "_pred")
    arr = np.asarray(Image.open(bad)).copy()
    arr[5, 5] = 99
    Image.fromarray(arr).save(bad)
    out = tmp_path / "r.json"
    rc = main(["evaluate-dir", "--pred", str(pred), "--gt-root", str(toy_root / "target"),
               "--output", str(out)])
    err = capfd.readouterr().err
    assert rc == 2 and not out.exists()
    assert err.startswith("uda: error: ground truth and labelIds predictions may hold only "
                          "Cityscapes label ids 0-33, 255")
    assert f"{bad}: values [99]" in err and err.count("values [") == 1


def test_user_message_unwraps_torch_wrappers():
    """A DataLoader worker's error (torch's ExceptionWrapper) and a fork/spawn rank's
    (ProcessRaisedException) give back the original message, multi-line ones whole."""
    import sys

    from torch._utils import ExceptionWrapper
    from torch.multiprocessing import ProcessRaisedException

    from datamodules.image_io import DatasetError
    from uda.config import ConfigError
    from uda.errors import user_message

    def raised(exc):
        try:
            try:
                raise KeyError("cause")
            except KeyError as cause:
                raise exc from cause
        except Exception:
            return ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0")

    reported = (ConfigError, DatasetError)
    wrapper = raised(DatasetError("/d/a.png: cannot decode image; re-download or remove it"))
    with pytest.raises(DatasetError) as e:
        wrapper.reraise()
    assert str(e.value).startswith("Caught DatasetError in DataLoader worker process 0")
    assert user_message(e.value, reported) == "/d/a.png: cannot decode image; re-download or remove it"
    assert user_message(DatasetError("a\nb: c"), reported) == "a\nb: c"
    child = raised(DatasetError("x.png: bad\nsecond line")).exc_msg
    rank = ProcessRaisedException(f"\n\n-- Process 1 terminated with the following error:\n{child}",
                                  1, 77)
    assert user_message(rank, reported) == "x.png: bad\nsecond line"
    other = ProcessRaisedException(raised(ZeroDivisionError("bug")).exc_msg, 0, 78)
    assert user_message(other, reported) is None
    assert user_message(ValueError("bug"), reported) is None
