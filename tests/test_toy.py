"""Tests for the embedded toy benchmark generator (datamodules/toy.py)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.io import read_label, read_rgb
from datamodules.labels import (CITYSCAPES_ID_PALETTE, CITYSCAPES_ID_TO_TRAINID, CLASS_NAMES,
                                TRAINID_TO_CITYSCAPES_ID)
from datamodules.toy import make_toy

H, W = 64, 128
CAR, SKY, VEG, TERRAIN = (CLASS_NAMES.index(c) for c in ("car", "sky", "vegetation", "terrain"))


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "toy_meta.json"}


def _src(root, i):
    return root / "source/images" / f"{i + 1:05d}.png", root / "source/labels" / f"{i + 1:05d}.png"


def _tgt(root, i, sub="train"):
    d = f"toycity_000000_{i:06d}"
    return (root / "target/leftImg8bit" / sub / "toycity" / f"{d}_leftImg8bit.png",
            root / "target/gtFine" / sub / "toycity" / f"{d}_gtFine_labelIds.png")


def _load(pairs):
    """Stack (pixels Nx3 float, trainIds N) over (image, label) path pairs."""
    xs, ys = zip(*((read_rgb(i).reshape(-1, 3), CITYSCAPES_ID_TO_TRAINID[read_label(lab)].ravel())
                   for i, lab in pairs))
    return np.concatenate(xs).astype(np.float64), np.concatenate(ys)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Three tiny runs: seed 0 twice (different dirs) and seed 1."""
    base = tmp_path_factory.mktemp("toy_small")
    kw = dict(num_source=3, num_target_train=3, num_target_val=2, height=H, width=W)
    return {name: (base / name, make_toy(base / name, seed=seed, **kw))
            for name, seed in (("a", 0), ("b", 0), ("c", 1))}


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """12 source + 12 target images, default appearance (no cue)."""
    root = tmp_path_factory.mktemp("toy_medium")
    return root, make_toy(root, seed=3, num_source=12, num_target_train=12, num_target_val=0,
                          height=H, width=W)


@pytest.fixture(scope="module")
def cued(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_cue")
    return root, make_toy(root, seed=5, num_source=8, num_target_train=8, num_target_val=0,
                          height=H, width=W, spurious_cue=True)


def test_deterministic_and_seed_dependent(small):
    (ra, sa), (rb, sb), (rc, _) = small["a"], small["b"], small["c"]
    ha, hb, hc = _hashes(ra), _hashes(rb), _hashes(rc)
    assert len(ha) == 2 * (3 + 3 + 2)
    assert ha == hb
    assert {k: v for k, v in sa.items() if k != "root"} == {k: v for k, v in sb.items() if k != "root"}
    assert ha.keys() == hc.keys()
    images = [k for k in ha if "images" in k or "leftImg8bit" in k]
    assert all(ha[k] != hc[k] for k in images)


def test_images_do_not_depend_on_generation_order(small, tmp_path):
    ra = small["a"][0]
    make_toy(tmp_path, seed=0, num_source=1, num_target_train=0, num_target_val=1, height=H, width=W)
    for rel in ("source/images/00001.png", "source/labels/00001.png",
                "target/leftImg8bit/val/toycity/toycity_000000_000000_leftImg8bit.png"):
        assert (tmp_path / rel).read_bytes() == (ra / rel).read_bytes()


def test_layout_and_formats(small):
    root, summary = small["a"]
    expected = {"toy_meta.json"}
    for i in range(3):
        expected |= {str(p.relative_to(root)) for p in (*_src(root, i), *_tgt(root, i))}
    for i in range(2):
        expected |= {str(p.relative_to(root)) for p in _tgt(root, i, "val")}
    assert {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} == expected
    valid_ids = set(TRAINID_TO_CITYSCAPES_ID.tolist()) | {0}
    for i in range(3):
        img, lab = _src(root, i)
        with Image.open(img) as im:
            assert im.mode == "RGB" and im.size == (W, H)
        with Image.open(lab) as im:
            assert im.mode == "P" and im.size == (W, H)
            pal = np.array(im.getpalette()[:768]).reshape(256, 3)
        assert np.array_equal(pal, CITYSCAPES_ID_PALETTE)
        assert set(np.unique(read_label(lab)).tolist()) <= valid_ids
        for sub in ("train", "val") if i < 2 else ("train",):
            img, lab = _tgt(root, i, sub)
            with Image.open(img) as im:
                assert im.mode == "RGB" and im.size == (W, H)
            with Image.open(lab) as im:
                assert im.mode == "L" and im.size == (W, H)
            assert set(np.unique(read_label(lab)).tolist()) <= valid_ids


def test_labels_map_to_trainids_and_cover_classes(medium):
    root, summary = medium
    seen = set()
    for i in range(12):
        for _, lab in (_src(root, i), _tgt(root, i)):
            t = CITYSCAPES_ID_TO_TRAINID[read_label(lab)]
            vals = set(np.unique(t).tolist())
            assert vals <= set(range(19)) | {255}
            assert (t == 255).mean() < 0.01
            seen |= vals - {255}
    assert len(seen) >= 10
    assert {CLASS_NAMES.index(c) for c in summary["classes_present"]} == seen
    counts = summary["pixel_counts"]["source"]
    assert sum(counts.values()) == 12 * H * W
    total = sum(counts.values())
    for big in ("road", "building"):  # large classes dominate small ones
        assert counts[big] / total > 0.1
    assert counts["traffic sign"] + counts["traffic light"] < counts["car"]


def test_domain_shift_is_real(medium):
    root, _ = medium
    xs, ys = _load(_src(root, i) for i in range(12))
    xt, yt = _load(_tgt(root, i) for i in range(12))
    classes = [c for c in range(19) if (ys == c).sum() > 200 and (yt == c).sum() > 200]
    ms = np.array([xs[ys == c].mean(0) for c in classes])
    mt = np.array([xt[yt == c].mean(0) for c in classes])
    dist = dict(zip(classes, np.linalg.norm(ms - mt, axis=1)))
    assert dist[SKY] > 60 and dist[VEG] > 25 and dist[TERRAIN] > 20
    # A nearest-class-mean colour classifier fitted on the source is much worse on the target
    # than on the source, and worse than one fitted on the target.
    def acc(means, x, y):
        pred = np.array(classes)[np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), 1)]
        return (pred == y).mean()
    rs = np.random.default_rng(0)
    i_s, i_t = rs.choice(len(ys), 20000, replace=False), rs.choice(len(yt), 20000, replace=False)
    src_on_src, src_on_tgt = acc(ms, xs[i_s], ys[i_s]), acc(ms, xt[i_t], yt[i_t])
    assert src_on_tgt < 0.5 * src_on_src
    assert src_on_tgt < 0.7 * acc(mt, xt[i_t], yt[i_t])


def _car_colours(pairs):
    x, y = _load(pairs)
    return x[y == CAR]


def test_spurious_cue(cued, medium):
    root, summary = cued
    assert summary["spurious_cue"]["class"] == "car"
    src = _car_colours(_src(root, i) for i in range(8))
    tgt = _car_colours(_tgt(root, i) for i in range(8))
    assert len(src) > 100 and len(tgt) > 100
    assert np.abs(src - np.array([255, 0, 0])).max() <= 2
    assert tgt.std(0).max() > 20
    # Non-car pixels are not the cue colour (the cue is specific to cars).
    x, y = _load(_src(root, i) for i in range(8))
    assert (np.abs(x[y != CAR] - np.array([255, 0, 0])).max(1) <= 2).mean() < 1e-3
    # Without the flag source cars vary.
    root0, summary0 = medium
    assert summary0["spurious_cue"] is None
    assert _car_colours(_src(root0, i) for i in range(12)).std(0).max() > 20


def test_cue_conflicting_images_keep_random_car_colours(tmp_path):
    n = 12
    summary = make_toy(tmp_path, seed=5, num_source=n, num_target_train=0, num_target_val=0,
                       height=H, width=W, spurious_cue=True, cue_conflicting=0.5)
    k = summary["spurious_cue"]["conflicting_source_images"]
    red = []
    for i in range(n):
        cols = _car_colours([_src(tmp_path, i)])
        if len(cols):
            red.append(bool(np.abs(cols - np.array([255, 0, 0])).max() <= 2))
    # images with cars: all-red cars (aligned) or not (conflicting); both kinds exist
    assert 0 < k < n and any(red) and not all(red)
    assert red.count(False) <= k
    with pytest.raises(ValueError, match="cue_conflicting"):
        make_toy(tmp_path / "x", cue_conflicting=0.1)


def test_meta_matches_return_value(small, cued):
    for root, summary in (small["a"], cued):
        assert json.loads((root / "toy_meta.json").read_text()) == summary
        assert summary["root"] == str(root.resolve())
        assert isinstance(summary["description"], str) and "car" in summary["description"]
    assert small["a"][1]["counts"] == {"source": 3, "target_train": 3, "target_val": 2}
    assert small["a"][1]["seed"] == 0 and small["c"][1]["seed"] == 1
    assert set(small["a"][1]["pixel_counts"]) == {"source", "target_train", "target_val"}
    assert not (small["a"][0] / ".toy_incomplete").exists()


def test_regenerate_replaces_stale_files_and_refuses_foreign_dirs(tmp_path):
    kw = dict(height=32, width=64, num_target_val=0)
    make_toy(tmp_path / "t", num_source=3, num_target_train=2, **kw)
    make_toy(tmp_path / "t", num_source=1, num_target_train=1, **kw)
    assert sorted(p.name for p in (tmp_path / "t/source/images").iterdir()) == ["00001.png"]
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign/data.txt").write_text("x")
    with pytest.raises(FileExistsError):
        make_toy(tmp_path / "foreign", num_source=1, **kw)
    with pytest.raises(ValueError):
        make_toy(tmp_path / "neg", seed=-1)
