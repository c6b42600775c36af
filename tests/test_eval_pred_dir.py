"""evaluate_pred_dir vs the OFFICIAL cityscapesscripts evaluator on real Cityscapes val labels.

Predictions are derived from the 15 real frankfurt val label maps in ../shared/real_samples (never
copied into the repo; written to tmp_path, GT subsets are symlinked). Skipped when absent.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.image_io import DatasetError
from datamodules.labels import CITYSCAPES_ID_TO_TRAINID, CLASS_NAMES, TRAINID_TO_CITYSCAPES_ID
from uda.evaluation import evaluate_pred_dir
from uda.metrics.results import format_table

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real_samples" / "cityscapes"
GT_SUFFIX = "_gtFine_labelIds.png"


def _gt_files() -> list[Path]:
    files = sorted((REAL / "gtFine" / "val").glob(f"*/*{GT_SUFFIX}"))
    if len(files) < 15:
        pytest.skip(f"real Cityscapes val labels not found under {REAL}")
    return files


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


def _write(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="L").save(path, compress_level=1)


def _key(gt: Path) -> str:
    return gt.name[:-len(GT_SUFFIX)]


def _gt_root(tmp: Path, gts: list[Path]) -> Path:
    """A Cityscapes-layout root holding symlinks to a subset of the real GT files."""
    root = tmp / "gt_subset"
    for gt in gts:
        dst = root / "gtFine" / "val" / gt.parent.name / gt.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(gt)
    return root


def _perturb(gt: np.ndarray, seed: int) -> np.ndarray:
    """Relabel regions of a GT labelIds map with ids in 0..33 (the official evaluator's range)."""
    rng = np.random.default_rng(seed)
    p = gt.copy()
    h, w = p.shape
    p[p == 24] = 25                                       # person -> rider (class swap)
    left = p[:, : w // 2]
    left[left == 11] = 21                                 # building -> vegetation, left half
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    p[y:y + h // 4, x:x + w // 4] = 7                     # rectangle of road
    y = rng.integers(h // 3, h - 60)
    p[y:y + 50, :] = 26                                   # band of car
    p[rng.random(p.shape) < 0.02] = 0                     # scattered 'unlabeled' (non-eval id)
    y, x = rng.integers(0, h - 100), rng.integers(0, w - 200)
    p[y:y + 100, x:x + 200] = 9                           # block of 'parking' (non-eval id)
    y, x = rng.integers(0, h - 80), rng.integers(0, w - 80)
    p[y:y + 80, x:x + 80] = 31                            # block of train
    return p


def _to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    return CITYSCAPES_ID_TO_TRAINID[label_ids]


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """Call the official evaluator programmatically: (pred_dir, gt files) -> its result dict."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs

    def run(pred_dir: Path, gts: list[Path]) -> dict:
        mp = pytest.MonkeyPatch()
        mp.setattr(np, "in1d", np.isin, raising=False)   # removed in numpy 2.4
        try:
            args = cs.CArgs()
            args.__dict__.update(vars(cs.args))
            args.evalInstLevelScore = False
            args.evalPixelAccuracy = False
            args.JSONOutput = False
            args.quiet = True
            args.colorized = False
            args.bold = args.nocol = ""
            args.predictionPath = str(pred_dir)
            args.predictionWalk = None
            args.groundTruthSearch = str(REAL / "gtFine" / "val" / "*" / f"*{GT_SUFFIX}")
            gt_list = [str(g) for g in gts]
            pred_list = [cs.getPrediction(args, g) for g in gt_list]   # official matching
            return cs.evaluateImgLists(pred_list, gt_list, args)
        finally:
            mp.undo()

    return run


def _assert_matches_official(ours: dict, off: dict) -> None:
    for name in CLASS_NAMES:
        o = off["classScores"][name]
        if math.isnan(o):
            assert ours["per_class_iou"][name] is None, name
        else:
            assert ours["per_class_iou"][name] is not None, name
            assert abs(ours["per_class_iou"][name] - 100.0 * o) < 1e-6, (name, ours, o)
    assert abs(ours["mIoU"] - 100.0 * off["averageScoreClasses"]) < 1e-6
    # the official 34x34 label-id matrix, restricted to the evaluated ids, is our 19x19 matrix
    cm = np.asarray(off["confMatrix"], dtype=np.int64)
    ids = TRAINID_TO_CITYSCAPES_ID.astype(int)
    np.testing.assert_array_equal(np.asarray(ours["confusion_matrix"]), cm[np.ix_(ids, ids)])
    non_eval_pred = [i for i in range(cm.shape[1]) if CITYSCAPES_ID_TO_TRAINID[i] == 255]
    np.testing.assert_array_equal(ours["predicted_ignore"], cm[np.ix_(ids, non_eval_pred)].sum(1))
    # pixel accuracy over evaluated GT pixels, non-evaluated predictions counted as wrong
    acc = np.trace(cm[np.ix_(ids, ids)]) / cm[ids].sum()
    assert abs(ours["pixel_accuracy"] - 100.0 * acc) < 1e-9


@pytest.fixture(scope="module")
def all15(tmp_path_factory):
    """Prediction folders for all 15 real val frames: exact, relabelled, relabelled as trainIds."""
    gts = _gt_files()
    tmp = tmp_path_factory.mktemp("preds15")
    for i, gt in enumerate(gts):
        lab = _read(gt)
        city = gt.parent.name
        _write(lab, tmp / "exact" / city / f"{_key(gt)}_leftImg8bit.png")
        pert = _perturb(lab, seed=i)
        _write(pert, tmp / "relabel" / city / "sub" / f"{_key(gt)}_pred.png")   # nested: recursive
        _write(_to_train_ids(pert), tmp / "train" / f"{_key(gt)}.png")
    return gts, tmp


def test_exact_copies_give_100(all15, official):
    gts, tmp = all15
    ours = evaluate_pred_dir(tmp / "exact", REAL, split="val", fmt="labelIds")
    assert ours["num_images"] == 15
    assert all(v == 100.0 for v in ours["per_class_iou"].values())   # all 19 classes occur
    assert ours["mIoU"] == 100.0 and ours["pixel_accuracy"] == 100.0 and ours["fwIoU"] == 100.0
    assert sum(ours["predicted_ignore"]) == 0
    _assert_matches_official(ours, official(tmp / "exact", gts))


def test_relabelled_matches_official_all15(all15, official):
    gts, tmp = all15
    off = official(tmp / "relabel", gts)
    ours = evaluate_pred_dir(tmp / "relabel", REAL, fmt="labelIds")
    _assert_matches_official(ours, off)
    assert ours["num_images"] == 15
    assert 20.0 < ours["mIoU"] < 95.0
    assert sum(ours["predicted_ignore"]) > 0         # the non-eval predictions were counted as FN
    # trainIds variant of the same predictions: identical scores
    ours_t = evaluate_pred_dir(tmp / "train", REAL, fmt="trainIds")
    _assert_matches_official(ours_t, off)
    assert ours_t["confusion_matrix"] == ours["confusion_matrix"]
    # result is JSON-serialisable and printable
    json.dumps(ours, allow_nan=False)
    table = format_table(ours)
    assert "mIoU" in table and all(name in table for name in CLASS_NAMES)
    # single-threaded path gives the same numbers
    assert evaluate_pred_dir(tmp / "train", REAL, fmt="trainIds", num_workers=1) == ours_t


def test_absent_classes_nan_like_official(tmp_path, official):
    """Classes absent from GT: NaN unless predicted on an evaluated GT pixel (then IoU 0)."""
    gts = _gt_files()[:3]
    pred_dir = tmp_path / "pred"
    total = np.zeros(256, dtype=np.int64)
    for gt in gts:
        total += np.bincount(_read(gt).ravel(), minlength=256)
    absent = [i for i in TRAINID_TO_CITYSCAPES_ID.astype(int) if total[i] == 0]
    assert len(absent) >= 2, absent
    only_on_ignored, on_valid = absent[0], absent[1]
    for gt in gts:
        lab = _read(gt)
        p = lab.copy()
        p[np.isin(lab, [1, 3])] = only_on_ignored          # ego vehicle / out of roi: GT-ignored
        p[:40, :] = on_valid
        p[lab == 26] = 4                                    # car predicted as 'static' (non-eval)
        _write(p, pred_dir / f"{_key(gt)}.png")
    off = official(pred_dir, gts)
    ours = evaluate_pred_dir(pred_dir, _gt_root(tmp_path, gts))
    _assert_matches_official(ours, off)
    name = lambda i: CLASS_NAMES[CITYSCAPES_ID_TO_TRAINID[i]]  # noqa: E731
    assert ours["per_class_iou"][name(only_on_ignored)] is None
    assert ours["per_class_iou"][name(on_valid)] == 0.0
    assert ours["per_class_iou"]["car"] == 0.0
    assert ours["per_class_iou"]["road"] is not None and ours["per_class_iou"]["road"] > 90.0


def test_label_id_255_is_non_eval_like_id_0(tmp_path):
    """labelIds 255 (license plate, id -1, as stored in uint8) is a non-eval id like 0."""
    gts = _gt_files()[:2]
    root = _gt_root(tmp_path, gts)
    for gt in gts:
        p = _perturb(_read(gt), seed=3)
        _write(p, tmp_path / "a" / f"{_key(gt)}.png")
        p[p == 0] = 255
        _write(p, tmp_path / "b" / f"{_key(gt)}.png")
    assert evaluate_pred_dir(tmp_path / "a", root) == evaluate_pred_dir(tmp_path / "b", root)


def test_label_ids_without_class_are_rejected_naming_file_and_value(tmp_path):
    """labelIds mode: a prediction value that is no Cityscapes id (34..254, or >= 256 in a 16-bit
    file) is an error listing every such file and value, as is such a value in the ground truth."""
    gts = _gt_files()[:3]
    root = _gt_root(tmp_path, gts)
    pred = tmp_path / "pred"
    p0 = _read(gts[0]).copy()
    p0[:4, :4] = 200
    _write(p0, pred / f"{_key(gts[0])}.png")
    p16 = _read(gts[1]).astype(np.uint16)
    p16[-1, -1] = 1000
    pred.mkdir(exist_ok=True)
    Image.fromarray(p16).save(pred / f"{_key(gts[1])}.png")
    _write(_read(gts[2]), pred / f"{_key(gts[2])}.png")       # a valid prediction
    with pytest.raises(DatasetError) as e:
        evaluate_pred_dir(pred, root)
    msg = str(e.value)
    assert f"{_key(gts[0])}.png: values [200]" in msg and f"{_key(gts[1])}.png: values [1000]" in msg
    assert f"{_key(gts[2])}.png" not in msg and "files with other values (2)" in msg
    # a ground-truth file with a class-less id is named too (whatever the prediction format)
    bad_gt = root / "gtFine" / "val" / gts[2].parent.name / gts[2].name
    g = _read(gts[2]).copy()
    g[0, 0] = 77
    bad_gt.unlink()
    _write(g, bad_gt)
    _write(_read(gts[0]), pred / f"{_key(gts[0])}.png")
    _write(_read(gts[1]), pred / f"{_key(gts[1])}.png")
    for fmt in ("labelIds", "trainIds"):
        with pytest.raises(DatasetError, match=rf"{gts[2].name}: values \[77\]"):
            evaluate_pred_dir(pred, root, fmt=fmt)


def test_matching_errors_list_all_files(tmp_path):
    gts = _gt_files()[:4]
    root = _gt_root(tmp_path, gts)
    small = np.zeros((8, 8), dtype=np.uint8)
    pred = tmp_path / "pred"
    # gts[0]: ok; gts[1], gts[2]: missing; gts[3]: two candidates; plus two extras
    _write(small, pred / f"{_key(gts[0])}.png")
    _write(small, pred / f"{_key(gts[3])}_a.png")
    _write(small, pred / "x" / f"{_key(gts[3])}_b.png")
    _write(small, pred / "lindau_000000_000019_leftImg8bit.png")
    _write(small, pred / "notes.png")
    (pred / "readme.txt").write_text("not a png, ignored")
    with pytest.raises(DatasetError) as e:
        evaluate_pred_dir(pred, root)
    msg = str(e.value)
    for s in (gts[1].name, gts[2].name, f"{_key(gts[3])}_a.png", f"{_key(gts[3])}_b.png",
              "lindau_000000_000019_leftImg8bit.png", "notes.png"):
        assert s in msg, (s, msg)
    assert gts[0].name not in msg and "readme.txt" not in msg
    assert "without a prediction (2)" in msg and "without a GT file (2)" in msg


def test_missing_sized_predictions_list_all_files(tmp_path):
    gts = _gt_files()[:3]
    root = _gt_root(tmp_path, gts)
    pred = tmp_path / "pred"
    _write(_read(gts[0]), pred / f"{_key(gts[0])}.png")
    _write(np.zeros((512, 1024), np.uint8), pred / f"{_key(gts[1])}.png")
    _write(np.zeros((1024, 2047), np.uint8), pred / f"{_key(gts[2])}.png")
    with pytest.raises(DatasetError) as e:
        evaluate_pred_dir(pred, root)
    msg = str(e.value)
    assert f"{_key(gts[1])}.png: 1024x512" in msg and f"{_key(gts[2])}.png: 2047x1024" in msg
    assert f"{_key(gts[0])}.png" not in msg
    # a colour visualisation is rejected too
    Image.new("RGB", (2048, 1024)).save(pred / f"{_key(gts[1])}.png")
    _write(_read(gts[2]), pred / f"{_key(gts[2])}.png")
    with pytest.raises(DatasetError, match="RGB"):
        evaluate_pred_dir(pred, root)


def test_train_ids_out_of_range_rejected(tmp_path):
    gts = _gt_files()[:2]
    root = _gt_root(tmp_path, gts)
    for gt in gts:   # labelIds passed as trainIds: values 19..33 are invalid trainIds
        _write(_read(gt), tmp_path / "pred" / f"{_key(gt)}.png")
    with pytest.raises(DatasetError) as e:
        evaluate_pred_dir(tmp_path / "pred", root, fmt="trainIds")
    assert all(_key(gt) in str(e.value) for gt in gts)
    with pytest.raises(ValueError):
        evaluate_pred_dir(tmp_path / "pred", root, fmt="colors")


def test_torch_fallback_equals_cv2_path(tmp_path, monkeypatch):
    """The histogram fallback without OpenCV (torch bincount) gives identical results."""
    import uda.evaluation.pred_dir as pd
    gts = _gt_files()[:3]
    root = _gt_root(tmp_path, gts)
    for i, gt in enumerate(gts):
        _write(_perturb(_read(gt), seed=10 + i), tmp_path / "pred" / f"{_key(gt)}.png")
    with_cv2 = evaluate_pred_dir(tmp_path / "pred", root)
    monkeypatch.setattr(pd, "cv2", None)
    assert evaluate_pred_dir(tmp_path / "pred", root) == with_cv2


def test_cli_evaluate_dir_writes_same_json(all15, tmp_path, capsys):
    from uda.cli import main
    gts, tmp = all15
    out = tmp_path / "r.json"
    rc = main(["evaluate-dir", "--pred", str(tmp / "train"), "--gt-root", str(REAL),
               "--split", "val", "--format", "trainIds", "--output", str(out)])
    assert rc == 0 and "mIoU" in capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(
        evaluate_pred_dir(tmp / "train", REAL, fmt="trainIds")))
    rc = main(["evaluate-dir", "--pred", str(tmp_path / "empty"), "--gt-root", str(REAL)])
    assert rc == 2
