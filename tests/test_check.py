"""`uda data check` on the real Cityscapes samples and on broken copies of them."""
import json
import shutil

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label
from PIL import Image

from datamodules.labels import CLASS_NAMES
from uda.cli import main


def reference_counts(label_files):
    """Pixel counts per trainId class straight from cityscapesscripts' table."""
    counts = {n: 0 for n in CLASS_NAMES}
    ignored = 0
    for f in label_files:
        ids, n = np.unique(np.asarray(Image.open(f)), return_counts=True)
        for v, c in zip(ids.tolist(), n.tolist()):
            lbl = id2label.get(v)
            if lbl is not None and 0 <= lbl.trainId < 19:
                counts[lbl.name] += c
            else:
                ignored += c
    return counts, ignored


@pytest.mark.parametrize("split", ["val", "train"])
def test_check_real_cityscapes_counts_equal_official_mapping(real_samples, tmp_path, split, capsys):
    root = real_samples / "cityscapes"
    out = tmp_path / "stats.json"
    rc = main(["data", "check", "--dataset", "cityscapes", "--root", str(root), "--split", split,
               "--output", str(out)])
    assert rc == 0
    stats = json.loads(out.read_text())
    files = sorted((root / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))
    counts, ignored = reference_counts(files)
    assert stats["class_pixels"] == counts
    assert stats["ignored_pixels"] == ignored
    assert stats["num_images"] == (2 if split == "train" else 0)
    assert stats["problems"] == []
    assert set(stats) >= {"num_images", "class_pixels", "ignored_pixels", "problems"}
    assert sum(counts.values()) + ignored == len(files) * 2048 * 1024
    assert "road" in capsys.readouterr().out


def _copy(real_samples, tmp_path):
    root = tmp_path / "cs"
    shutil.copytree(real_samples / "cityscapes", root)
    return root


def _run(root, split, capsys):
    rc = main(["data", "check", "--dataset", "cityscapes", "--root", str(root), "--split", split])
    return rc, capsys.readouterr().out


def test_check_missing_label(real_samples, tmp_path, capsys):
    root = _copy(real_samples, tmp_path)
    victim = root / "gtFine/val/frankfurt/frankfurt_000000_000576_gtFine_labelIds.png"
    victim.unlink()
    rc, out = _run(root, "val", capsys)
    assert rc != 0 and "frankfurt_000000_000576_gtFine_labelIds.png" in out


def test_check_truncated_png(real_samples, tmp_path, capsys):
    root = _copy(real_samples, tmp_path)
    victim = root / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    rc, out = _run(root, "train", capsys)
    assert rc != 0 and "aachen_000001_000019_gtFine_labelIds.png" in out
    # and a truncated image
    root2 = _copy(real_samples, tmp_path / "b")
    img = root2 / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    img.write_bytes(img.read_bytes()[:5000])
    rc, out = _run(root2, "train", capsys)
    assert rc != 0 and "aachen_000000_000019_leftImg8bit.png" in out


def test_check_image_without_label(real_samples, tmp_path, capsys):
    root = _copy(real_samples, tmp_path)
    for f in (root / "gtFine/train/aachen").glob("aachen_000001_000019_*"):
        f.unlink()
    rc, out = _run(root, "train", capsys)
    assert rc != 0 and "aachen_000001_000019_leftImg8bit.png: image has no label" in out


def test_check_label_values_and_missing_root(tmp_path, capsys):
    root = tmp_path / "gta"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "images" / "00001.png")
    Image.fromarray(np.full((4, 6), 200, np.uint8)).save(root / "labels" / "00001.png")
    rc = main(["data", "check", "--dataset", "gta5", "--root", str(root), "--split", "train"])
    out = capsys.readouterr().out
    assert rc != 0 and "unexpected label value(s) [200]" in out
    assert rc == 1  # a finding of the check, not a usage error
    rc = main(["data", "check", "--dataset", "gta5", "--root", str(tmp_path / "x"), "--split", "a"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""  # a usage error: one line, no empty report
    assert captured.err == (f"uda: error: --root {tmp_path / 'x'}: no such folder; give the gta5 "
                            "root (the folder holding its official layout)\n")


def test_check_gta5_size_mismatch_is_a_warning(tmp_path, capsys):
    root = tmp_path / "gta"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "images" / "00001.png")
    Image.fromarray(np.full((8, 12), 7, np.uint8)).save(root / "labels" / "00001.png")
    out_json = tmp_path / "s.json"
    rc = main(["data", "check", "--dataset", "gta5", "--root", str(root), "--split", "train",
               "--output", str(out_json)])
    stats = json.loads(out_json.read_text())
    assert rc == 0 and stats["class_pixels"]["road"] == 96  # counted at native label size
    assert any("differs from image size" in w for w in stats["warnings"])
