"""uda.evaluation.export: exact round trips, palette, overlay, acceptance by pred_dir."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.labels import (CITYSCAPES_ID_TO_TRAINID, IGNORE_INDEX, NUM_CLASSES,
                                TRAINID_COLORS, TRAINID_TO_CITYSCAPES_ID)
from uda.evaluation.export import (FORMATS, colorize, overlay, to_label_ids, write_prediction)
from uda.evaluation.pred_dir import evaluate_pred_dir


def _all_ids(h: int = 6, w: int = 10, seed: int = 0) -> np.ndarray:
    """(h, w) uint8 trainIds containing every class and ignore."""
    values = np.r_[np.arange(NUM_CLASSES), IGNORE_INDEX].astype(np.uint8)
    rng = np.random.default_rng(seed)
    ids = rng.choice(values, size=(h, w))
    ids.flat[:len(values)] = values
    return ids


def _read(path) -> tuple[str, np.ndarray]:
    with Image.open(path) as im:
        return im.mode, np.asarray(im).copy()


def test_label_ids_round_trip_through_the_file(tmp_path):
    ids = _all_ids()
    path = write_prediction(ids, tmp_path, "frankfurt_000000_000294", "labelIds")
    assert path == tmp_path / "frankfurt_000000_000294_labelIds.png"
    mode, back = _read(path)
    assert mode == "L" and back.dtype == np.uint8 and back.shape == ids.shape
    assert np.array_equal(back, to_label_ids(ids))
    assert np.array_equal(CITYSCAPES_ID_TO_TRAINID[back], ids)  # ignore -> 0 -> ignore
    assert np.all(back[ids == IGNORE_INDEX] == 0)
    assert to_label_ids(np.array([[0, 1, 13, 18, 255]])).tolist() == [[7, 8, 26, 33, 0]]
    assert np.array_equal(to_label_ids(np.arange(NUM_CLASSES)[None]),
                          TRAINID_TO_CITYSCAPES_ID[None])


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_train_ids_round_trip_any_integer_dtype(tmp_path, dtype):
    ids = _all_ids(seed=1)
    mode, back = _read(write_prediction(ids.astype(dtype), tmp_path / "sub", "a", "trainIds"))
    assert mode == "L" and np.array_equal(back, ids)


def test_torch_tensor_input(tmp_path):
    ids = _all_ids(seed=2)
    _, back = _read(write_prediction(torch.from_numpy(ids.astype(np.int64)), tmp_path, "t",
                                     "trainIds"))
    assert np.array_equal(back, ids)


def test_colours_are_the_cityscapes_palette(tmp_path):
    ids = _all_ids(seed=3)
    col = colorize(ids)
    assert col.shape == (*ids.shape, 3) and col.dtype == np.uint8
    for t in range(NUM_CLASSES):
        assert np.all(col[ids == t] == TRAINID_COLORS[t])
    assert np.all(col[ids == IGNORE_INDEX] == 0)
    assert colorize(np.array([[0, 255]])).tolist() == [[[128, 64, 128], [0, 0, 0]]]  # road, ignore
    mode, back = _read(write_prediction(ids, tmp_path, "c", "color"))
    assert mode == "RGB" and np.array_equal(back, col)


def test_overlay_arithmetic_by_hand(tmp_path):
    image = np.array([[[100, 100, 100], [0, 255, 10], [7, 8, 9]]], dtype=np.uint8)  # (1, 3, 3)
    ids = np.array([[0, 2, 255]])  # road (128, 64, 128), building (70, 70, 70), ignore
    out = overlay(image, ids, alpha=0.5)
    assert out.dtype == np.uint8
    assert out.tolist() == [[[114, 82, 114], [35, 162, 40], [7, 8, 9]]]
    # alpha 0.25: 0.75 * 100 + 0.25 * (128, 64, 128) = (107, 91, 107); ignore unchanged
    assert overlay(image, ids, alpha=0.25)[0, 0].tolist() == [107, 91, 107]
    assert np.array_equal(overlay(image, ids, alpha=0.0), image)
    assert overlay(image, ids, alpha=1.0)[0, :2].tolist() == [[128, 64, 128], [70, 70, 70]]
    mode, back = _read(write_prediction(ids, tmp_path, "o", "overlay", image=image))
    assert mode == "RGB" and np.array_equal(back, out)


def test_errors(tmp_path):
    ids = _all_ids()
    with pytest.raises(ValueError, match="labelIds.*trainIds.*color.*overlay"):
        write_prediction(ids, tmp_path, "x", "colour")
    with pytest.raises(ValueError, match="needs the input image"):
        write_prediction(ids, tmp_path, "x", "overlay")
    with pytest.raises(ValueError, match="6x10 but train_ids is 6x9"):
        overlay(np.zeros((6, 10, 3), np.uint8), ids[:, :9])
    with pytest.raises(ValueError, match="uint8 RGB"):
        overlay(np.zeros((6, 10), np.uint8), ids)
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.zeros((6, 10, 3), np.uint8), ids, alpha=1.5)
    with pytest.raises(ValueError, match=r"values \[19, 26\]"):
        colorize(np.array([[0, 19, 26]], np.uint8))  # label ids passed as trainIds
    with pytest.raises(ValueError, match=r"values \[-1, 300\]"):
        to_label_ids(np.array([[-1, 300, 0]]))
    with pytest.raises(ValueError, match="integer dtype"):
        colorize(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\) map"):
        colorize(np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="file-name stem"):
        write_prediction(ids, tmp_path, "a/b", "trainIds")
    assert FORMATS == ("labelIds", "trainIds", "color", "overlay")
    assert not any(tmp_path.iterdir())  # nothing written by failed calls


def test_label_ids_folder_is_accepted_by_pred_dir(tmp_path):
    """A folder written with fmt='labelIds' scores 100 mIoU when the predictions equal the GT."""
    gt_root, pred_dir = tmp_path / "cityscapes", tmp_path / "pred"
    rng = np.random.default_rng(0)
    names = ["frankfurt_000000_000294", "frankfurt_000001_000538", "lindau_000000_000019"]
    for k, name in enumerate(names):
        city = name.split("_")[0]
        gt = rng.integers(0, 34, size=(12, 20)).astype(np.uint8)  # all label ids, incl. ignored
        gt_path = gt_root / "gtFine" / "val" / city / f"{name}_gtFine_labelIds.png"
        gt_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt).save(gt_path)
        write_prediction(CITYSCAPES_ID_TO_TRAINID[gt], pred_dir / city, name, "labelIds")
        # other formats in another folder must not disturb the evaluation
        write_prediction(CITYSCAPES_ID_TO_TRAINID[gt], tmp_path / "vis", name, "color")
    res = evaluate_pred_dir(pred_dir, gt_root, fmt="labelIds", num_workers=1)
    assert res["num_images"] == 3
    assert res["mIoU"] == 100.0 and res["pixel_accuracy"] == 100.0
    assert all(v == 100.0 for v in res["per_class_iou"].values())  # all 19 classes present
    assert sum(res["predicted_ignore"]) == 0
    # the same predictions as trainIds files are accepted with fmt="trainIds"
    for name in names:
        gt_path = next((gt_root / "gtFine" / "val").glob(f"*/{name}_gtFine_labelIds.png"))
        _, gt = _read(gt_path)
        write_prediction(CITYSCAPES_ID_TO_TRAINID[gt], tmp_path / "pred_t", name, "trainIds")
    assert evaluate_pred_dir(tmp_path / "pred_t", gt_root, fmt="trainIds")["mIoU"] == 100.0
