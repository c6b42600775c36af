"""`uda data prepare`: prepared samples equal raw ones, resumable, originals untouched, parallel,
and the cached class statistics of rare-class sampling (issue 15 items 2, issue 14 item 3)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import datamodules.datasets.base as base
import datamodules.prepare as prepare_module
from datamodules.check import check_dataset
from datamodules.class_stats import class_counts
from datamodules.datasets import CityscapesDataset, GTA5Dataset, SynthiaDataset
from datamodules.debias.sampling import dataset_class_counts
from datamodules.image_io import DatasetError, read_label
from datamodules.prepare import prepare_dataset
from datamodules.transforms import build_transform
from uda.cli import main

TRAIN = dict(resize=(48, 96), scale_range=(0.5, 1.5), crop=(32, 32), hflip=0.5, jitter=0.3)


def snapshot(root: Path) -> dict:
    """path -> (sha1, mtime_ns) of every file under `root` (prepared folders excluded)."""
    return {p.relative_to(root).as_posix(): (hashlib.sha1(p.read_bytes()).hexdigest(),
                                             p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and ".uda_prepared" not in p.parts}


def files_of(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def toy(toy_root, tmp_path) -> Path:
    """A private copy of the tiny toy benchmark (tests prepare inside it)."""
    shutil.copytree(toy_root, tmp_path / "toy", ignore=shutil.ignore_patterns(".uda_prepared"))
    return tmp_path / "toy"


def make_synthia(root: Path, n: int = 3) -> Path:
    """A tiny SYNTHIA layout: 16-bit 3-channel labels, class id in the first channel."""
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 72, 3), np.uint8)).save(
            root / "RGB" / f"{i:07d}.png")
        cls = rng.integers(0, 23, (40, 72)).astype(np.uint16)
        rgb16 = np.stack([cls, np.full_like(cls, 777), np.zeros_like(cls)], -1)
        cv2.imwrite(str(root / "GT" / "LABELS" / f"{i:07d}.png"), rgb16[:, :, ::-1])
    return root


def reads(monkeypatch) -> list:
    """The image files the datasets decode from now on."""
    seen, real = [], base.read_rgb
    monkeypatch.setattr(base, "read_rgb", lambda p: seen.append(Path(p)) or real(p))
    return seen


def assert_same_items(raw, prepared, seeds=(3, 11)):
    assert len(raw) == len(prepared)
    for i in range(len(raw)):
        for seed in seeds:
            a, b = raw[(i, seed)], prepared[(i, seed)]
            assert torch.equal(a["image"], b["image"]), (i, seed)
            assert ("mask" in a) == ("mask" in b)
            if "mask" in a:
                assert torch.equal(a["mask"], b["mask"]), (i, seed)


CASES = {  # dataset -> (root below the data folder, split)
    "gta5": ("source", "train"), "cityscapes": ("target", "val"), "synthia": ("synthia", "train")}


@pytest.mark.parametrize("dataset", list(CASES))
def test_prepared_items_equal_raw_items(toy, dataset, monkeypatch):
    if dataset == "synthia":
        make_synthia(toy / "synthia")
    sub, split = CASES[dataset]
    root = toy / sub
    cls = {"gta5": GTA5Dataset, "cityscapes": CityscapesDataset, "synthia": SynthiaDataset}[dataset]
    summary = prepare_dataset(dataset, root, split, sizes=[TRAIN["resize"]], workers=1)
    assert summary["prepared"] == len(cls(root, split)) and summary["result"]["problems"] == []
    for transform in (build_transform(**TRAIN),   # training: resized copies, resized masks
                      build_transform(resize=TRAIN["resize"], transform_mask=False),  # evaluation
                      build_transform(crop=(24, 40), hflip=0.5), None):  # native size
        for labelled in (True, False):
            raw = cls(root, split, transform=transform, labelled=labelled, prepared=False)
            prepared = cls(root, split, transform=transform, labelled=labelled)
            assert raw.prepared is None and prepared.prepared is not None
            seen = reads(monkeypatch)
            assert_same_items(raw, prepared)
            prepared_reads = [p for p in seen if ".uda_prepared" in p.parts]
            if transform is not None and transform.resize is not None:  # the copies were read
                assert len(prepared_reads) == len(seen) // 2 > 0
            else:
                assert prepared_reads == []
            monkeypatch.undo()
    # the native trainIds maps are read instead of the raw label files
    ds = cls(root, split)
    loaded = []
    monkeypatch.setattr(ds, "load_label", lambda p: loaded.append(p))
    image, mask = ds.load(0)
    assert loaded == [] and mask.shape == image.shape[:2]


def test_real_cityscapes_and_gta5_prepared_equal_raw(real_samples, tmp_path, monkeypatch):
    # Cityscapes: two real 2048x1024 frames, labelIds mapped to trainIds, copies at 512x1024
    cs, out = real_samples / "cityscapes", tmp_path / "cs_prepared"
    before = snapshot(cs)
    summary = prepare_dataset("cityscapes", cs, "train", out=out, sizes=[(512, 1024)], workers=1)
    assert (summary["prepared"], summary["skipped"]) == (2, 0)
    assert snapshot(cs) == before and not (cs / ".uda_prepared").exists()
    t = build_transform(resize=(512, 1024), scale_range=(0.5, 1.5), crop=(256, 256), hflip=0.5)
    raw = CityscapesDataset(cs, "train", transform=t, prepared=False)
    prepared = CityscapesDataset(cs, "train", transform=t, prepared=out)
    seen = reads(monkeypatch)
    assert_same_items(raw, prepared, seeds=(5,))
    assert sum(".uda_prepared" in p.parts or out in p.parents for p in seen) == 2
    # GTA5: the real palette label (512x256) under an image of another size (resized to it)
    gta = tmp_path / "gta5"
    (gta / "labels").mkdir(parents=True)
    shutil.copy(real_samples / "gta5" / "labels" / "00100370.png", gta / "labels" / "00001.png")
    (gta / "images").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 356, 3), np.uint8)).save(
        gta / "images" / "00001.png")
    summary = prepare_dataset("gta5", gta, "train", sizes=[(100, 178)])
    assert summary["result"]["warnings"] == [
        f"{gta / 'labels' / '00001.png'}: label size 512x256 differs from image size 356x200; "
        "resized (nearest) when loaded"]
    t = build_transform(resize=(100, 178), crop=(64, 64), hflip=0.5)
    with pytest.warns(UserWarning, match="label size 512x256"):
        raw_items = [GTA5Dataset(gta, transform=t, prepared=False)[(0, s)] for s in (1, 2)]
    items = [GTA5Dataset(gta, transform=t)[(0, s)] for s in (1, 2)]
    for a, b in zip(raw_items, items):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_stats_equal_data_check_and_second_run_skips(toy, capsys):
    root = toy / "target"
    before = snapshot(root)
    rc = main(["data", "prepare", "--dataset", "cityscapes", "--root", str(root), "--split",
               "train", "--resize", "48x96", "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[-1] == (
        f"uda: cityscapes train at {root}: 12 samples prepared, 0 already done; trainIds maps, "
        f"48x96 copies and class statistics in {root / '.uda_prepared' / 'train'}")
    split_dir = root / ".uda_prepared" / "train"
    stats = json.loads((split_dir / "stats.json").read_text())
    assert stats == check_dataset("cityscapes", root, "train")
    assert sum(stats["class_pixels"].values()) == 12 * 128 * 256
    written = {p: p.stat().st_mtime_ns for p in split_dir.rglob("*.png")}
    assert len(written) == 12 * 3
    rc = main(["data", "prepare", "--dataset", "cityscapes", "--root", str(root), "--split",
               "train", "--resize", "48x96", "--workers", "1"])
    assert rc == 0 and "0 samples prepared, 12 already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in split_dir.rglob("*.png")} == written
    assert json.loads((split_dir / "stats.json").read_text()) == stats
    assert snapshot(root) == before  # the originals: same bytes, same modification times
    # a new size: every sample is done again, with both sizes
    summary = prepare_dataset("cityscapes", root, "train", sizes=[(32, 64)])
    assert summary["prepared"] == 12
    assert len(list(split_dir.glob("*/images/*.png"))) == 24


def test_interrupted_run_resumes_and_gives_the_files_of_an_uninterrupted_one(toy, tmp_path,
                                                                           monkeypatch):
    root = toy / "source"
    clean = tmp_path / "clean"
    prepare_dataset("gta5", root, "train", out=clean, sizes=[(48, 96)], workers=1)
    out = tmp_path / "resumed"
    calls, real = [], prepare_module.write_png_atomic

    def dies_at_the_8th_write(img, path):
        calls.append(path)
        if len(calls) == 8:  # sample 3's second file: a partial temp file, then the interruption
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).with_name(f".{Path(path).name}.tmp").write_bytes(b"\x89PNG partial")
            raise KeyboardInterrupt
        real(img, path)
    monkeypatch.setattr(prepare_module, "write_png_atomic", dies_at_the_8th_write)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("gta5", root, "train", out=out, sizes=[(48, 96)], workers=1)
    monkeypatch.undo()
    recorded = [json.loads(line)["name"] for line in
                (out / "train" / "samples.jsonl").read_text().splitlines()]
    assert recorded == ["00001", "00002"]  # 3 files per sample; the third was cut off
    # a torn journal line and a half-written file of an unrecorded sample are not taken as done
    with open(out / "train" / "samples.jsonl", "a") as f:
        f.write('{"name": "00004", "ima')
    (out / "train" / "labels" / "00004.png").write_bytes(b"\x89PNG truncated")
    summary = prepare_dataset("gta5", root, "train", out=out, sizes=[(48, 96)], workers=1)
    assert (summary["prepared"], summary["skipped"]) == (10, 2)
    resumed = files_of(out)
    assert [name for name in resumed if name.endswith(".tmp")] == []  # rewritten, renamed
    for journal in ("train/samples.jsonl", "train/class_stats.jsonl"):  # but for the torn line
        lines = resumed.pop(journal).decode().splitlines()
        if journal == "train/samples.jsonl":
            assert lines[2] == '{"name": "00004", "ima'
            del lines[2]
        assert lines == files_of(clean)[journal].decode().splitlines()
    expected = files_of(clean)
    for journal in ("train/samples.jsonl", "train/class_stats.jsonl", "uda_prepared.json"):
        expected.pop(journal)
    resumed.pop("uda_prepared.json")
    assert resumed == expected


def test_two_workers_write_the_same_files(toy, tmp_path):
    root = toy / "source"
    one, two = tmp_path / "one", tmp_path / "two"
    a = prepare_dataset("gta5", root, "train", out=one, sizes=[(48, 96)], workers=1)
    b = prepare_dataset("gta5", root, "train", out=two, sizes=[(48, 96)], workers=2)
    assert a["result"] == b["result"] and a["prepared"] == b["prepared"] == 12
    assert files_of(one) == files_of(two)


def test_changed_original_is_read_raw_and_prepared_again(toy):
    root = toy / "source"
    prepare_dataset("gta5", root, "train", sizes=[(48, 96)])
    label = root / "labels" / "00002.png"
    with Image.open(label) as im:
        ids = np.asarray(im).copy()
        palette = im.getpalette()
    ids[:, :] = 7  # road everywhere
    im = Image.fromarray(ids, "P")
    im.putpalette(palette)
    im.save(label)
    os.utime(label, ns=(1_000_000_000, 1_000_000_000))
    t = build_transform(**TRAIN)
    ds = GTA5Dataset(root, transform=t)
    assert ds.prepared.native_label(ds.samples[1]) is None  # stale: the original is read
    assert ds.prepared.native_label(ds.samples[0]) is not None
    assert set(ds[(1, 0)]["mask"].unique().tolist()) <= {0, 255}
    assert_same_items(GTA5Dataset(root, transform=t, prepared=False), ds, seeds=(0,))
    summary = prepare_dataset("gta5", root, "train", sizes=[(48, 96)])
    assert (summary["prepared"], summary["skipped"]) == (1, 11)
    prepared = read_label(root / ".uda_prepared" / "train" / "labels" / "00002.png")
    assert set(np.unique(prepared).tolist()) == {0}


def test_problems_exit_1_and_those_samples_are_not_prepared(toy, capsys):
    root = toy / "source"
    bad = root / "labels" / "00003.png"
    Image.fromarray(np.full((128, 256), 200, np.uint8), "L").save(bad)
    rc = main(["data", "prepare", "--dataset", "gta5", "--root", str(root), "--split", "train",
               "--workers", "2"])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"problem: {bad}: unexpected label value(s) [200]" in out
    assert "11 samples prepared" in out and "1 problem(s) above (those samples not prepared)" in out
    assert not (root / ".uda_prepared" / "train" / "labels" / "00003.png").exists()
    with pytest.raises(DatasetError, match="unexpected label value"):
        GTA5Dataset(root).load(2)  # read raw, refused as before


def test_usage_errors(toy, tmp_path, capsys):
    root = toy / "source"
    readonly = tmp_path / "ro"
    shutil.copytree(root, readonly)
    readonly.chmod(0o555)
    try:
        rc = main(["data", "prepare", "--dataset", "gta5", "--root", str(readonly), "--split",
                   "train"])
        err = capsys.readouterr().err
        assert rc == 2 and err == (f"uda: error: --root {readonly}: read-only, the prepared files "
                                   "cannot be written there; give --out DIR (a writable folder) "
                                   "and set data.source.prepared / data.target.prepared to it\n")
        assert not (readonly / ".uda_prepared").exists()
    finally:
        readonly.chmod(0o755)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    rc = main(["data", "prepare", "--dataset", "gta5", "--root", str(root), "--split", "train",
               "--out", str(mine)])
    assert rc == 2 and "not empty and not a prepared folder" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    rc = main(["data", "prepare", "--dataset", "gta5", "--root", str(root), "--split", "train",
               "--out", str(toy)])
    assert rc == 2 and "the dataset's own folder (or one above it)" in capsys.readouterr().err
    # a prepared folder of another dataset / root is refused by the datasets
    other = tmp_path / "other"
    prepare_dataset("cityscapes", toy / "target", "val", out=other)
    with pytest.raises(DatasetError, match="prepared for cityscapes at .*, not for gta5"):
        GTA5Dataset(root, prepared=other)
    with pytest.raises(DatasetError, match="prepared folder not found"):
        GTA5Dataset(root, prepared=tmp_path / "missing")


def test_class_counts_cached_equal_computed_and_invalidated(toy, capsys):
    root = toy / "source"
    ds = GTA5Dataset(root)
    expected = dataset_class_counts(ds, 19)
    counts, message = class_counts(ds, 19)
    cache = root / ".uda_prepared" / "train" / "class_stats.jsonl"
    assert torch.equal(counts, expected) and counts.dtype == torch.int64
    assert message == (f"class statistics of 12 gta5 train labels: computed 12 of them (first "
                       f"run); cached in {cache} for the next runs (`uda data prepare` computes "
                       "them ahead)")
    counts, message = class_counts(GTA5Dataset(root), 19)
    assert torch.equal(counts, expected)
    assert message == f"class statistics of 12 gta5 train labels read from {cache}"
    # a changed label file: its line no longer matches, only it is computed again
    label = root / "labels" / "00005.png"
    with Image.open(label) as im:
        ids = np.asarray(im).copy()
        palette = im.getpalette()
    ids[: ids.shape[0] // 2] = 23  # sky over the top half
    im = Image.fromarray(ids, "P")
    im.putpalette(palette)
    im.save(label)
    ds = GTA5Dataset(root)
    counts, message = class_counts(ds, 19)
    assert "computed 1 of them (new or changed label files)" in message
    assert torch.equal(counts, dataset_class_counts(ds, 19))
    assert not torch.equal(counts[4], expected[4]) and torch.equal(counts[:4], expected[:4])
    # another list file: the listed subset, read from the cache
    (root / "subset.txt").write_text("00005\n00001\n")
    ds = GTA5Dataset(root, list_file=root / "subset.txt")
    counts, message = class_counts(ds, 19)
    assert "read from" in message and torch.equal(counts, dataset_class_counts(ds, 19))


def test_class_counts_from_prepare_and_not_cached_when_read_only(real_samples, toy, tmp_path):
    root = toy / "target"
    prepare_dataset("cityscapes", root, "train", workers=2)
    ds = CityscapesDataset(root, "train")
    counts, message = class_counts(ds, 19)
    assert message.endswith("read from " + str(root / ".uda_prepared/train/class_stats.jsonl"))
    assert torch.equal(counts, dataset_class_counts(ds, 19))
    ds = CityscapesDataset(real_samples / "cityscapes", "train")  # read-only root
    counts, message = class_counts(ds, 19)
    assert torch.equal(counts, dataset_class_counts(ds, 19))
    assert "computed 2 of them (first run); not cached (" in message
    assert not (real_samples / "cityscapes" / ".uda_prepared").exists()
    counts, message = class_counts(CityscapesDataset(real_samples / "cityscapes", "train",
                                                     prepared=False), 19)
    assert message.endswith("not cached (prepared=false); unset it to cache them")


def test_run_start_reads_the_cached_statistics(toy, tmp_path, capsys):
    from conftest import shrunk_config
    from uda.build import build_datamodule
    cfg = shrunk_config(toy, tmp_path / "run", "source_only", "data.debias.rare_class.enabled=true")
    build_datamodule(cfg)
    cache = toy / "source" / ".uda_prepared" / "train" / "class_stats.jsonl"
    assert (f"uda: rare-class sampling: class statistics of 12 gta5 train labels: computed 12 of "
            f"them (first run); cached in {cache}") in capsys.readouterr().out
    build_datamodule(cfg)
    assert capsys.readouterr().out == (f"uda: rare-class sampling: class statistics of 12 gta5 "
                                       f"train labels read from {cache}\n")
    cfg = shrunk_config(toy, tmp_path / "run", "source_only", "data.debias.rare_class.enabled=true",
                        "data.source.prepared=false")
    dm = build_datamodule(cfg)
    assert dm.source_train.prepared_folder is None
    assert capsys.readouterr().out.endswith("not cached (prepared=false); unset it to cache them\n")
    cfg.data.source.prepared = str(tmp_path / "missing")
    with pytest.raises(DatasetError, match="missing: prepared folder not found"):
        build_datamodule(cfg)
