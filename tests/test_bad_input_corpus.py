"""The bad-input corpus: every command, given input a user can get wrong, ends with one error
line naming the key or file (`uda: error: ...`, or argparse's `uda <command>: error: ...` for a
malformed option), exit code 2, no traceback, and leaves every existing file as it was and
creates none (but for the outputs listed in CREATES, written before the bad input).

All cases share one `world` (a copy of the tiny toy data, variants of it with one bad file, a
finished tiny run, bad checkpoints and configs); each case lists the strings its error line
must contain. The whole world is compared byte for byte before and after each case."""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, SHRINK
from uda.cli import main

CONFIG = str(REPO / "configs/toy/source_only.yaml")
TINY = [*SHRINK, "trainer.max_steps=2", "trainer.accelerator=cpu"]
ERROR_LINE = re.compile(r"^uda( [\w-]+)*: error: ")


class Bomb:
    """Unpickling it would create the file `marker` (a code-executing checkpoint)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def toy_variant(toy_root: Path, dst: Path, spoil) -> Path:
    shutil.copytree(toy_root, dst)
    spoil(dst)
    return dst


def set_pixels(path: Path, value: int) -> None:
    arr = np.asarray(Image.open(path)).copy()
    arr[0, :4] = value
    img = Image.fromarray(arr)
    if Image.open(path).mode == "P":  # GTA5 labels are palette PNGs: keep the palette
        img.putpalette(Image.open(path).getpalette())
    img.save(path)


@pytest.fixture(scope="module")
def world(toy_root, tmp_path_factory) -> dict:
    w = tmp_path_factory.mktemp("world")
    data = toy_variant(toy_root, w / "toy", lambda d: None)
    first = lambda d, pattern: sorted(d.glob(pattern))[1]  # noqa: E731
    p = {"w": w, "data": data, "new": w / "new_run", "run": w / "run", "marker": w / "pwned"}
    # every source file spoilt: whichever a short run draws first is named
    p["bad_image"] = toy_variant(toy_root, w / "bad_image", lambda d: [
        f.write_bytes(b"not a png") for f in d.glob("source/images/*.png")])
    p["bad_label"] = toy_variant(toy_root, w / "bad_label", lambda d: [
        set_pixels(f, 200) for f in d.glob("source/labels/*.png")])
    p["bad_val"] = toy_variant(toy_root, w / "bad_val", lambda d: set_pixels(
        first(d, "target/gtFine/val/*/*_gtFine_labelIds.png"), 34))
    assert main(["train", "--config", CONFIG, f"data.source.root={data / 'source'}",
                 f"data.target.root={data / 'target'}", f"run.dir={p['run']}", *TINY]) == 0
    os.environ.pop("UDA_RUN_DIR", None)
    p["ckpt"] = p["run"] / "checkpoints" / "last.ckpt"
    (w / "file").write_text("a file where a folder is needed\n")
    (w / "garbage.ckpt").write_bytes(b"\x00garbage" * 100)
    torch.save({"weights": torch.zeros(2)}, w / "foreign.ckpt")
    with open(w / "bomb.ckpt", "wb") as f:
        pickle.dump({"state_dict": Bomb(p["marker"])}, f)
    (w / "broken.yaml").write_text("method:\n  name: [source_only\n")
    (w / "child.yaml").write_text("defaults: [missing_parent.yaml]\nseed: 1\n")
    preds = w / "preds"
    preds.mkdir()
    for gt in sorted((data / "target/gtFine/val").glob("*/*_gtFine_labelIds.png")):
        shutil.copy(gt, preds / gt.name.replace("_gtFine_labelIds", "_pred"))
    p["bad_pred"] = sorted(preds.glob("*.png"))[2]
    set_pixels(p["bad_pred"], 77)
    images = w / "images"
    images.mkdir()
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(images / "a.png")
    (images / "b.png").write_bytes(b"garbage")
    return p


def train(p, *extra, data="data"):
    return ["train", "--config", CONFIG, f"data.source.root={p[data] / 'source'}",
            f"data.target.root={p[data] / 'target'}", *TINY, *extra]


def evaluate(p, *extra):
    return ["evaluate", "--checkpoint", str(p["ckpt"]), f"data.target.root={p['data'] / 'target'}",
            "data.num_workers=0", "trainer.progress_bar=false", *extra]


def new(p):
    return f"run.dir={p['new']}"


# (case id, argv of the world, strings the error line names)
CASES = [
    # --- train: config keys, values and files
    ("unknown-key", lambda p: train(p, new(p), "data.batch_sise=2"), ["data.batch_sise"]),
    ("wrong-type", lambda p: train(p, new(p), "data.batch_size=abc"), ["data.batch_size", "abc"]),
    ("batch-zero", lambda p: train(p, new(p), "data.batch_size=0"), ["data.batch_size"]),
    ("batch-negative", lambda p: train(p, new(p), "data.batch_size=-1"), ["data.batch_size"]),
    ("val-batch-zero", lambda p: train(p, new(p), "data.val_batch_size=0"), ["data.val_batch_size"]),
    ("lr-negative", lambda p: train(p, new(p), "method.optim.lr=-1"), ["method.optim.lr"]),
    ("seed-negative", lambda p: train(p, new(p), "seed=-1"), ["seed"]),
    ("workers-negative", lambda p: train(p, new(p), "data.num_workers=-1"), ["data.num_workers"]),
    ("unknown-method", lambda p: train(p, new(p), "method.name=fancy"), ["method.name", "fancy"]),
    ("unknown-strategy", lambda p: train(p, new(p), "trainer.strategy=fancy"), ["trainer.strategy"]),
    ("unknown-precision", lambda p: train(p, new(p), "trainer.precision=17"), ["trainer.precision"]),
    ("override-without-value", lambda p: train(p, new(p), "trainer.max_steps"), ["trainer.max_steps"]),
    ("config-missing", lambda p: ["train", "--config", str(p["w"] / "nope.yaml"), new(p)],
     ["nope.yaml"]),
    ("config-yaml-syntax", lambda p: ["train", "--config", str(p["w"] / "broken.yaml"), new(p)],
     ["broken.yaml"]),
    ("config-defaults-missing", lambda p: ["train", "--config", str(p["w"] / "child.yaml"), new(p)],
     ["child.yaml", "missing_parent.yaml"]),
    ("source-root-missing", lambda p: train(p, new(p), f"data.source.root={p['w'] / 'nowhere'}"),
     ["nowhere"]),
    ("pretrained-missing", lambda p: train(p, new(p), f"model.pretrained={p['w'] / 'none.pth'}"),
     ["model.pretrained", "none.pth"]),
    ("pretrained-is-a-run-of-another-model",
     lambda p: train(p, new(p), f"model.pretrained={p['ckpt']}", "model.width=16"),
     ["model.pretrained", "last.ckpt", "--resume"]),
    # --- train: runs and checkpoints
    ("existing-run-dir", lambda p: train(p, f"run.dir={p['run']}"), [None, "--resume auto"]),
    ("resume-missing", lambda p: train(p, new(p), "--resume", str(p["w"] / "none.ckpt")),
     ["none.ckpt"]),
    ("resume-garbage", lambda p: train(p, new(p), "--resume", str(p["w"] / "garbage.ckpt")),
     ["garbage.ckpt"]),
    ("resume-foreign", lambda p: train(p, new(p), "--resume", str(p["w"] / "foreign.ckpt")),
     ["foreign.ckpt"]),
    ("resume-code-executing-pickle", lambda p: train(p, new(p), "--resume", str(p["w"] / "bomb.ckpt")),
     ["bomb.ckpt"]),
    ("resume-other-model", lambda p: train(p, new(p), "model.width=16", "--resume", str(p["ckpt"])),
     ["last.ckpt"]),
    ("run-dir-below-a-file", lambda p: train(p, f"run.dir={p['w'] / 'file' / 'run'}"),
     ["run.dir", "is a file"]),
    # --- train: data files
    ("corrupt-image", lambda p: train(p, new(p), data="bad_image"), ["bad_image", "cannot decode"]),
    ("unknown-label-value", lambda p: train(p, new(p), data="bad_label"), ["bad_label", "[200]"]),
    ("unknown-label-value-in-worker", lambda p: train(p, new(p), "data.num_workers=1", data="bad_label"),
     ["bad_label", "[200]"]),
    # --- evaluate
    ("evaluate-checkpoint-missing",
     lambda p: ["evaluate", "--checkpoint", str(p["w"] / "none.ckpt")], ["none.ckpt"]),
    ("evaluate-checkpoint-garbage",
     lambda p: ["evaluate", "--checkpoint", str(p["w"] / "garbage.ckpt")], ["garbage.ckpt"]),
    ("evaluate-code-executing-pickle",
     lambda p: ["evaluate", "--checkpoint", str(p["w"] / "bomb.ckpt")], ["bomb.ckpt"]),
    ("evaluate-output-below-a-file",
     lambda p: evaluate(p, "--output", str(p["w"] / "file" / "r.json")), ["--output", "is a file"]),
    ("evaluate-export-below-a-file",
     lambda p: evaluate(p, "--export", str(p["w"] / "file" / "x")), ["--export", "is a file"]),
    ("evaluate-unknown-key", lambda p: evaluate(p, "data.target.rooot=x"), ["data.target.rooot"]),
    ("evaluate-target-missing",
     lambda p: evaluate(p, f"data.target.root={p['w'] / 'nowhere'}"), ["nowhere"]),
    ("evaluate-unknown-label-value",
     lambda p: evaluate(p, f"data.target.root={p['bad_val'] / 'target'}"), ["bad_val", "[34]"]),
    # --- predict
    ("predict-input-missing", lambda p: ["predict", "--checkpoint", str(p["ckpt"]), "--input",
                                         str(p["w"] / "nowhere"), "--output", str(p["w"] / "o")],
     ["nowhere"]),
    ("predict-output-is-a-file", lambda p: ["predict", "--checkpoint", str(p["ckpt"]), "--input",
                                            str(p["w"] / "images"), "--output", str(p["w"] / "file")],
     ["--output", "file"]),
    ("predict-corrupt-image", lambda p: ["predict", "--checkpoint", str(p["ckpt"]), "--input",
                                         str(p["w"] / "images"), "--output", str(p["w"] / "o")],
     ["b.png", "cannot decode", "o/a_color.png"]),  # says what it wrote before the bad image
    ("predict-checkpoint-garbage", lambda p: ["predict", "--checkpoint", str(p["w"] / "garbage.ckpt"),
                                              "--input", str(p["w"] / "images"), "--output",
                                              str(p["w"] / "o")], ["garbage.ckpt"]),
    ("predict-unknown-format", lambda p: ["predict", "--checkpoint", str(p["ckpt"]), "--input",
                                          str(p["w"] / "images"), "--output", str(p["w"] / "o"),
                                          "--format", "jpeg"], ["--format", "jpeg"]),
    # --- translate
    ("translate-not-a-dranet-checkpoint",
     lambda p: ["translate", "--checkpoint", str(p["ckpt"]), "--input", str(p["data"] / "source"),
                "--output", str(p["w"] / "o")], ["last.ckpt", "DRANet"]),
    ("translate-checkpoint-missing",
     lambda p: ["translate", "--checkpoint", str(p["w"] / "none.ckpt"), "--input",
                str(p["data"] / "source"), "--output", str(p["w"] / "o")], ["none.ckpt"]),
    ("translate-output-is-a-file",
     lambda p: ["translate", "--checkpoint", str(p["ckpt"]), "--input", str(p["data"] / "source"),
                "--output", str(p["w"] / "file")], ["--output", "file"]),
    # --- evaluate-dir
    ("evaluate-dir-pred-missing",
     lambda p: ["evaluate-dir", "--pred", str(p["w"] / "nowhere"), "--gt-root",
                str(p["data"] / "target")], ["nowhere"]),
    ("evaluate-dir-gt-missing",
     lambda p: ["evaluate-dir", "--pred", str(p["w"] / "preds"), "--gt-root",
                str(p["w"] / "nowhere")], ["nowhere"]),
    ("evaluate-dir-id-without-class",
     lambda p: ["evaluate-dir", "--pred", str(p["w"] / "preds"), "--gt-root",
                str(p["data"] / "target")], ["label ids 0-33"]),
    # --- data make-toy / check
    ("make-toy-size", lambda p: ["data", "make-toy", "--out", str(p["w"] / "t"), "--size", "abc"],
     ["--size", "abc"]),
    ("make-toy-negative-count",
     lambda p: ["data", "make-toy", "--out", str(p["w"] / "t"), "--num-source", "-3"],
     ["--num-source", "-3"]),
    ("make-toy-out-is-a-file", lambda p: ["data", "make-toy", "--out", str(p["w"] / "file")],
     ["--out", "file"]),
    ("make-toy-cue-conflicting-alone",
     lambda p: ["data", "make-toy", "--out", str(p["w"] / "t"), "--cue-conflicting", "0.05"],
     ["--cue-conflicting", "--spurious-cue"]),
    ("check-root-missing", lambda p: ["data", "check", "--dataset", "gta5", "--root",
                                      str(p["w"] / "nowhere"), "--split", "train"], ["nowhere"]),
    ("check-unknown-dataset", lambda p: ["data", "check", "--dataset", "kitti", "--root",
                                         str(p["data"]), "--split", "train"], ["--dataset", "kitti"]),
    # --- benchmark toy
    ("benchmark-unknown-method",
     lambda p: ["benchmark", "toy", "--methods", "source_only,fancy", "--data", str(p["data"]),
                "--out", str(p["w"] / "b")], ["fancy"]),
    ("benchmark-bad-shifts", lambda p: ["benchmark", "toy", "--shifts", "0,x", "--data",
                                        str(p["w"] / "sd"), "--out", str(p["w"] / "b")],
     ["--shifts"]),
    ("benchmark-zero-seeds", lambda p: ["benchmark", "toy", "--seeds", "0", "--out",
                                        str(p["w"] / "b")], ["--seeds"]),
    ("benchmark-cue-conflicting-alone",
     lambda p: ["benchmark", "toy", "--cue-conflicting", "0.5", "--data", str(p["w"] / "cd"),
                "--out", str(p["w"] / "b")], ["--cue-conflicting", "--spurious-cue"]),
    # --- the command itself
    ("unknown-command", lambda p: ["trian"], ["trian"]),
]
if torch.cuda.is_available():
    CASES = [c for c in CASES if c[0] != "accelerator-gpu-without-one"]
else:
    CASES.append(("accelerator-gpu-without-one", lambda p: train(p, new(p), "trainer.accelerator=gpu"),
                  ["trainer.accelerator"]))


#: cases that write some outputs before they meet the bad input (the error says so)
CREATES = {"predict-corrupt-image": ["o", "o/a_color.png"]}


def snapshot(root: Path) -> dict[str, str | None]:
    return {str(f.relative_to(root)): hashlib.sha1(f.read_bytes()).hexdigest() if f.is_file()
            else None for f in sorted(root.rglob("*"))}


@pytest.fixture(autouse=True)
def no_inherited_run_dir(monkeypatch):
    """`uda train` exports UDA_RUN_DIR for the ranks a launcher starts; in one test process it
    would reach the next case."""
    monkeypatch.delenv("UDA_RUN_DIR", raising=False)


@pytest.fixture
def workers_exit_fast(monkeypatch):
    """torch waits up to 5 s per DataLoader worker left by an exception: shorten it."""
    import gc

    import torch.utils.data._utils as loader_utils
    monkeypatch.setattr(loader_utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
    yield
    gc.collect()


def test_the_corpus_is_large():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,argv,named", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, name, argv, named, capfd, workers_exit_fast):
    before = snapshot(world["w"])
    try:
        rc = main(argv(world))
    except SystemExit as e:  # argparse: malformed option or unknown command
        rc = e.code
    err = capfd.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert len(lines) == 1, err
    for s in named:
        expected = str(world["run"]) if s is None else s
        assert expected in lines[0], (expected, lines[0])
    after = snapshot(world["w"])
    assert {k: after.get(k) for k in before} == before  # no existing file changed or removed
    created = sorted(set(after) - set(before))
    if name in CREATES:  # the outputs written before the bad input, and only those
        assert created == CREATES[name], created
        shutil.rmtree(world["w"] / created[0])
    assert created == [] or name in CREATES, created
    assert not world["marker"].exists()
