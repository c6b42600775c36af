"""Tests for the embedded toy benchmark generator (datamodules/toy.py)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from datamodules.image_io import read_label, read_rgb
from datamodules.labels import (CITYSCAPES_ID_PALETTE, CITYSCAPES_ID_TO_TRAINID, CLASS_NAMES,
                                TRAINID_TO_CITYSCAPES_ID)
from datamodules.toy import (DEFAULT_STYLE, SHIFT_RANGES, STYLE_JITTER, _TEX, _grade_matrix, _noise,
                             _style_target, make_toy, shift_style)
from datamodules.toy_scene import _render

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


# --- the seeded family of target appearances (shift=K) ------------------------------------------

TINY = dict(seed=0, num_source=2, num_target_train=2, num_target_val=1, height=32, width=64)
# Decoded pixels of TINY, recorded from the generator as it was before shifts existed.
DEFAULT_IMAGES_SHA256 = "227b472736f07258ea504e7e8afa6b17ef854682209d7b9322ba5c76bdb4367c"
DEFAULT_LABELS_SHA256 = "11ea1f286888b3be7e6cdaf2fc831b9a27ff57fa40e2aef3ddf18b8d05e14ba8"
DEFAULT_DOMAIN_SHIFT = {"hue_rotation_deg": [37, 53], "saturation": [.52, .68],
                       "cast_rgb": [1.08, .98, .82], "exposure": 1.2, "gamma": [1.15, 1.35],
                       "blur_sigma_px": [.7, 1.2], "noise_std": [.02, .008],
                       "lighting_gradient": .25, "vignette": .35}


def _is_image(rel: str) -> bool:
    return "images" in rel or "leftImg8bit" in rel


def _pixel_digest(root: Path, images: bool) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        rel = str(p.relative_to(root))
        if _is_image(rel) == images:
            h.update(rel.encode())
            h.update(np.asarray(Image.open(p)).tobytes())
    return h.hexdigest()


def _reference_style_target(sc, rng):
    """The target appearance of the generator before shifts existed, verbatim."""
    h, w = sc.h, sc.w
    bands = np.stack([_noise(rng, h, w, c) for c in (1.5, 5, 18)], -1)
    img = sc.rgb * np.clip(1 + (_TEX[sc.lab] * bands).sum(-1), .3, 1.7)[..., None]
    yy, xx = np.ogrid[-1:1:h * 1j, -1:1:w * 1j]
    ang = rng.uniform(0, 2 * np.pi)
    img *= ((1 + .25 * (np.cos(ang) * xx + np.sin(ang) * yy)) * (1 - .175 * (xx ** 2 + yy ** 2)))[..., None]
    m = _grade_matrix(np.deg2rad(45 + rng.uniform(-8, 8)), .6 + rng.uniform(-.08, .08),
                      np.array([1.08, .98, .82]) + rng.uniform(-.03, .03, 3))
    img = np.clip(1.2 * img @ m.T.astype(np.float32), 0, 1) ** (1.25 + rng.uniform(-.1, .1))
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(.7, 1.2))
    return img + rng.normal(0, .02, (h, w, 1)) + rng.normal(0, .008, (h, w, 3))


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """TINY generated with shift None, 0, 1, and 1 again (another directory)."""
    base = tmp_path_factory.mktemp("toy_shifts")
    return {name: (base / name, make_toy(base / name, shift=k, **TINY))
            for name, k in (("none", None), ("s0", 0), ("s1", 1), ("s1b", 1))}


def test_default_appearance_unchanged(shifted):
    root, summary = shifted["none"]
    assert _pixel_digest(root, images=True) == DEFAULT_IMAGES_SHA256
    assert _pixel_digest(root, images=False) == DEFAULT_LABELS_SHA256
    assert "shift" not in summary and summary["domain_shift"] == DEFAULT_DOMAIN_SHIFT
    assert "hue rotation ~45 deg" in summary["description"]


def test_default_style_matches_reference_implementation():
    for i in range(3):
        a, b = np.random.default_rng([4, 1, i]), np.random.default_rng([4, 1, i])
        sa, sb = _render(40, 72, a, False), _render(40, 72, b, False)
        assert np.array_equal(_style_target(sa, a), _reference_style_target(sb, b))
        assert np.array_equal(_style_target(sa, a, DEFAULT_STYLE), _reference_style_target(sb, b))


def test_shifts_change_target_images_only(shifted):
    hashes = {name: _hashes(root) for name, (root, _) in shifted.items()}
    keys = hashes["none"].keys()
    assert all(h.keys() == keys for h in hashes.values())
    target_images = [k for k in keys if "leftImg8bit" in k]
    others = [k for k in keys if k not in target_images]  # source images + labels, target labels
    assert len(target_images) == 3 and len(others) == 2 * 2 + 3
    for a, b in (("none", "s0"), ("none", "s1"), ("s0", "s1")):
        assert all(hashes[a][k] == hashes[b][k] for k in others), (a, b)
        assert all(hashes[a][k] != hashes[b][k] for k in target_images), (a, b)
    # the pixels differ substantially, not by a rounding bit
    img = lambda name: read_rgb(_tgt(shifted[name][0], 0)[0]).astype(float)  # noqa: E731
    assert np.abs(img("s0") - img("s1")).mean() > 10
    assert shifted["none"][1]["pixel_counts"] == shifted["s1"][1]["pixel_counts"]


def test_same_shift_is_byte_identical(shifted):
    (ra, sa), (rb, sb) = shifted["s1"], shifted["s1b"]
    assert _hashes(ra) == _hashes(rb)
    assert {k: v for k, v in sa.items() if k != "root"} == {k: v for k, v in sb.items() if k != "root"}


def test_shift_recorded_in_meta_and_description(shifted):
    for name, k in (("s0", 0), ("s1", 1)):
        root, summary = shifted[name]
        assert json.loads((root / "toy_meta.json").read_text()) == summary
        d = summary["domain_shift"]
        assert summary["shift"] == k and d["shift"] == k
        p = shift_style(k)
        assert d["hue_rotation_deg"] == pytest.approx([p["hue_deg"] - 8, p["hue_deg"] + 8], abs=1e-4)
        assert d["cast_rgb"] == pytest.approx(list(p["cast_rgb"]), abs=1e-4)
        assert d["exposure"] == pytest.approx(p["exposure"], abs=1e-4)
        assert d["texture_scale"]["road"] == pytest.approx(p["texture_scale"][0], abs=1e-4)
        assert f"shift {k} of the seeded family" in summary["description"]
        assert f"hue rotation {d['hue_rotation_deg'][0]:.0f} to" in summary["description"]
        assert "~45 deg" not in summary["description"]
    assert shifted["s0"][1]["domain_shift"] != shifted["s1"][1]["domain_shift"]


def _inside(v, lo, hi):
    return lo <= v <= hi


def test_shift_parameters_inside_documented_ranges():
    R, styles = SHIFT_RANGES, [shift_style(k) for k in range(60)]
    assert shift_style(7) == shift_style(7) and shift_style(7) != shift_style(8)
    for p in styles:
        assert -180 <= p["hue_deg"] < 180
        for key in ("saturation", "exposure", "gamma", "lighting_gradient", "vignette"):
            assert _inside(p[key], *R[key]), key
        assert all(_inside(c, *R["cast_rgb"]) for c in p["cast_rgb"])
        assert all(_inside(t, *R["texture_scale"]) for t in p["texture_scale"])
        assert len(p["texture_scale"]) == len(CLASS_NAMES)
        lo, hi = p["blur_sigma_px"]
        j = STYLE_JITTER["blur_sigma_px"]
        assert lo >= 0 and _inside(hi - j, *R["blur_sigma_px"]) and hi - lo <= 2 * j + 1e-12
        assert _inside(p["noise_std"][0], *R["noise_std"][0])
        assert _inside(p["noise_std"][1], *R["noise_std"][1])
    # the family covers the circle and both directions of exposure/gamma
    hues = np.array([p["hue_deg"] for p in styles])
    assert hues.min() < -120 and hues.max() > 120 and ((hues > -60) & (hues < 60)).any()
    assert min(p["gamma"] for p in styles) < 1 < max(p["gamma"] for p in styles)
    assert min(p["exposure"] for p in styles) < 1 < max(p["exposure"] for p in styles)
    assert min(p["saturation"] for p in styles) < 1 < max(p["saturation"] for p in styles)


def test_shifted_images_are_not_degenerate(tmp_path):
    for k in range(5):
        make_toy(tmp_path / str(k), seed=1, num_source=0, num_target_train=2, num_target_val=0,
                 height=32, width=64, shift=k)
        x = np.stack([read_rgb(_tgt(tmp_path / str(k), i)[0]) for i in range(2)]).astype(float)
        assert 15 < x.mean() < 240 and x.std() > 10, k


def test_invalid_shift(tmp_path, capsys):
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="shift must be an integer >= 0"):
            make_toy(tmp_path / "bad", shift=bad, **TINY)
    assert not (tmp_path / "bad").exists()
    from uda.cli import main
    with pytest.raises(SystemExit) as e:  # argparse's usage error, naming the option
        main(["data", "make-toy", "--out", str(tmp_path / "cli"), "--shift", "-2",
              "--num-source", "1", "--num-target", "1", "--num-val", "0", "--size", "32x64"])
    assert e.value.code == 2
    assert "error: argument --shift: must be >= 0, got -2" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()
    assert main(["data", "make-toy", "--out", str(tmp_path / "cli"), "--shift", "3",
                 "--num-source", "1", "--num-target", "1", "--num-val", "0", "--size", "32x64"]) == 0
    assert json.loads((tmp_path / "cli/toy_meta.json").read_text())["shift"] == 3
