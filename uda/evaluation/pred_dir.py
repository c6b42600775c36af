"""Exact Cityscapes evaluation of a folder of prediction PNGs, matching the official evaluator.

`evaluate_pred_dir` reproduces `cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling`
(per-class IoU on the 19 evaluated classes, and their mean) to floating-point precision, without
its slowness:

* Ground truth: `<gt_root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`, mapped to
  trainIds with `CITYSCAPES_ID_TO_TRAINID`. Pixels whose GT id is not evaluated are never counted.
* Matching (as the official `getPrediction`): `pred_dir` is searched recursively; a prediction
  belongs to a GT file when its file name starts with `<city>_<seq>_<frame>` and ends in `.png`.
  Unlike the official script, which stops at the first problem and silently ignores unmatched
  files, every missing, extra (no matching GT), ambiguous (several files for one GT) or mis-sized /
  multi-channel prediction is collected and reported in ONE `DatasetError` listing all of them.
* `fmt="labelIds"`: prediction values are Cityscapes label ids. Ids without a trainId (0 unlabeled,
  4 static, 9 parking, ..., 255 = license plate as stored in uint8) are "non-evaluated"
  predictions. A value that is no label id (34..254, or above 255 in a 16-bit file) belongs to no
  class: an error naming the file and the values, in predictions and ground truth alike (the
  official script rejects such GT ids and crashes on such predictions).
  `fmt="trainIds"`: values 0..18 are classes, 255 is a non-evaluated prediction, anything else is
  an error (it usually means labelIds were passed as trainIds).

Non-evaluated predictions, exactly as the official evaluator: the official confusion matrix is
over all 34 label ids, and for an evaluated class c
    TP = cm[c, c]
    FN = (row sum of c over ALL predicted ids) - TP   -> includes GT-c pixels predicted as a
                                                        non-evaluated id
    FP = sum of column c over rows of evaluated GT classes other than c
                                                     -> GT-ignored pixels never count
    IoU_c = TP / (TP + FP + FN), NaN when the denominator is 0 (class absent from GT and never
            predicted on an evaluated GT pixel).
We accumulate a (20, 20) matrix `cm20[g, p]` over pixels with an evaluated GT class g in 0..18,
where column 19 collects the non-evaluated predictions and row 19 stays zero. For c < 19 the
generic `iou_per_class` on cm20 is then exactly the official formula (its row sum includes column
19 = the extra false negatives; its column sum runs over evaluated GT rows only). Pixel accuracy
(correct / evaluated GT pixels, non-evaluated predictions counted as wrong) and fwIoU come from
the same matrix. The returned `confusion_matrix` is the 19x19 block `cm20[:19, :19]` (rows = GT);
the dropped column is returned as `predicted_ignore` (per GT class, pixels predicted as a
non-evaluated id), so `sum(row) + predicted_ignore[row]` is the GT pixel count of that class.

Speed: each (GT, prediction) pair is decoded with PIL and reduced to a (256, 256) histogram of raw
(gt id, pred id) pairs in one pass (`cv2.calcHist` on the two uint8 maps; fallback: torch bincount
over `gt << 8 | pred`); the id->trainId mapping is applied to the tiny histogram, not to the
2-megapixel images. Pairs run on a thread pool (PIL decoding and the cv2/torch kernels release the
GIL). Cost on top of decoding the two PNGs: ~15% (see scripts/bench_eval.py).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

try:  # optional: fastest 2-D histogram of two uint8 maps
    import cv2
except ImportError:  # pragma: no cover - opencv is a project dependency, torch is the fallback
    cv2 = None

from datamodules.image_io import DatasetError, image_header
from datamodules.labels import (CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_RAW_IDS, CLASS_NAMES,
                                IGNORE_INDEX, NUM_CLASSES, describe_ids, unknown_ids)
from uda.metrics.results import results_dict

GT_SUFFIX = "_gtFine_labelIds.png"
FORMATS = ("labelIds", "trainIds")
_LABEL_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I")
_MAX_LISTED = 50  # files listed per problem kind in an error message


# ----------------------------------------------------------------------------------------------
# File discovery and matching
# ----------------------------------------------------------------------------------------------

def find_gt_files(gt_root: str | os.PathLike, split: str = "val") -> dict[str, Path]:
    """`{"<city>_<seq>_<frame>": labelIds path}` for `gt_root/gtFine/<split>/*/*_gtFine_labelIds.png`."""
    split_dir = Path(gt_root) / "gtFine" / split
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: ground-truth folder not found; gt_root must be the Cityscapes "
                           f"root that contains gtFine/{split}/<city>/")
    gts = {}
    for path in sorted(split_dir.glob(f"*/*{GT_SUFFIX}")):
        gts[path.name[:-len(GT_SUFFIX)]] = path
    if not gts:
        raise DatasetError(f"{split_dir}: no *{GT_SUFFIX} files in its city folders")
    return gts


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {s}" for s in shown) + more


def match_predictions(pred_dir: str | os.PathLike, gt_files: dict[str, Path]) -> dict[str, Path]:
    """Match prediction PNGs (searched recursively) to GT keys, as the official `getPrediction`.

    A file matches key `<city>_<seq>_<frame>` when its name starts with the key and ends in `.png`
    (the official pattern `<key>*.png`). Raises one `DatasetError` listing every missing, ambiguous
    and extra prediction.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DatasetError(f"{pred_dir}: prediction folder not found")
    key_lengths = sorted({len(k) for k in gt_files})
    found: dict[str, list[Path]] = {}
    extra: list[str] = []
    for root, dirs, files in os.walk(pred_dir):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(".png"):
                continue
            path = Path(root) / name
            keys = [name[:n] for n in key_lengths if name[:n] in gt_files]
            if not keys:
                extra.append(str(path))
            for key in keys:
                found.setdefault(key, []).append(path)
    missing = [str(gt) for key, gt in gt_files.items() if key not in found]
    ambiguous = [f"{key}: " + ", ".join(str(p) for p in paths)
                 for key, paths in found.items() if len(paths) > 1]
    if missing or ambiguous or extra:
        parts = [f"prediction folder {pred_dir} does not match the ground truth "
                 f"({len(gt_files)} GT files); each GT file <city>_<seq>_<frame>{GT_SUFFIX} needs "
                 "exactly one prediction named <city>_<seq>_<frame>*.png:"]
        if missing:
            parts.append(_listing("GT files without a prediction", missing))
        if ambiguous:
            parts.append(_listing("GT keys with several predictions", ambiguous))
        if extra:
            parts.append(_listing("predictions without a GT file", extra))
        raise DatasetError("\n".join(parts))
    return {key: found[key][0] for key in gt_files}


def check_pairs(pairs: list[tuple[Path, Path]]) -> None:
    """Header-only check of every (gt, pred) pair; one error listing all mis-sized/multi-channel files."""
    bad_size, bad_mode = [], []
    for gt, pred in pairs:
        _, gt_size = image_header(gt)
        mode, size = image_header(pred)
        if mode not in _LABEL_MODES:
            bad_mode.append(f"{pred}: mode {mode!r}")
        if size != gt_size:
            bad_size.append(f"{pred}: {size[1]}x{size[0]} (W x H), GT {gt.name} is "
                            f"{gt_size[1]}x{gt_size[0]}")
    if bad_size or bad_mode:
        parts = ["predictions must be single-channel label maps (PNG mode L, P or I;16) of the same "
                 "size as their ground truth:"]
        if bad_size:
            parts.append(_listing("predictions whose size differs from the ground truth", bad_size))
        if bad_mode:
            parts.append(_listing("predictions that are not single-channel label maps (e.g. colour "
                                  "visualisations)", bad_mode))
        raise DatasetError("\n".join(parts))


# ----------------------------------------------------------------------------------------------
# Per-pair histogram and folding into the confusion matrix
# ----------------------------------------------------------------------------------------------

def _decode(path: Path, out_of_range: list[tuple[Path, list[int]]]) -> np.ndarray:
    """HxW uint8 ids. Values outside 0..255 (16-bit files), never an id or trainId, become 255
    and are listed in `out_of_range` with the file."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot decode label PNG ({e})") from None
    if arr.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel label map, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        outside = (arr < 0) | (arr > 255)
        if outside.any():
            out_of_range.append((path, np.unique(arr[outside])[:10].tolist()))
        arr = np.where(outside, 255, arr).astype(np.uint8)
    return arr


def pair_histogram(gt_path: Path, pred_path: Path,
                   out_of_range: list[tuple[Path, list[int]]] | None = None) -> np.ndarray:
    """(256, 256) int64 counts of (raw GT id, raw prediction id) over all pixels of one pair;
    values outside 0..255 are counted as 255 and listed in `out_of_range`."""
    out_of_range = [] if out_of_range is None else out_of_range
    gt = _decode(gt_path, out_of_range)
    pred = _decode(pred_path, out_of_range)
    if gt.shape != pred.shape:
        raise DatasetError(f"{pred_path}: size {pred.shape[1]}x{pred.shape[0]} differs from ground "
                           f"truth {gt_path} ({gt.shape[1]}x{gt.shape[0]})")
    if cv2 is not None and gt.size < 2 ** 24:
        # 2-D histogram straight from the two uint8 maps (no temporaries, releases the GIL);
        # float32 counts are exact below 2**24 pixels per image.
        hist = cv2.calcHist([gt, pred], [0, 1], None, [256, 256], [0, 256, 0, 256])
        return hist.astype(np.int64)
    code = gt.astype(np.int32)        # one int32 temporary: code = gt << 8 | pred, in place
    np.left_shift(code, 8, out=code)
    np.bitwise_or(code, pred, out=code)
    hist = torch.bincount(torch.from_numpy(code.reshape(-1)), minlength=65536)
    return hist.numpy().reshape(256, 256)


def _pred_lut(fmt: str) -> np.ndarray:
    """256-entry map prediction value -> column 0..19 of cm20 (19 = non-evaluated prediction)."""
    if fmt == "labelIds":
        lut = CITYSCAPES_ID_TO_TRAINID.astype(np.int64)
    elif fmt == "trainIds":
        lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
        lut[:NUM_CLASSES] = np.arange(NUM_CLASSES)
    else:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    return np.where(lut < NUM_CLASSES, lut, NUM_CLASSES)


def fold_histogram(hist: np.ndarray, fmt: str) -> np.ndarray:
    """(256, 256) raw (gt id, pred id) counts -> (20, 20) int64 cm20 (see module docstring)."""
    gt_lut = CITYSCAPES_ID_TO_TRAINID
    rows = np.zeros((NUM_CLASSES + 1, 256), dtype=np.int64)
    valid = gt_lut < NUM_CLASSES
    rows[gt_lut[valid], np.flatnonzero(valid)] = 1       # GT ids without trainId: dropped
    cols = np.zeros((256, NUM_CLASSES + 1), dtype=np.int64)
    cols[np.arange(256), _pred_lut(fmt)] = 1
    return rows @ hist.astype(np.int64) @ cols


def _invalid_train_ids(hist: np.ndarray) -> list[int]:
    used = np.flatnonzero(hist.sum(0))
    return [int(v) for v in used if NUM_CLASSES <= v < IGNORE_INDEX]


def _classless_ids(hist: np.ndarray, gt_path: Path, pred_path: Path, fmt: str) -> list[str]:
    """Files of one pair holding values that are no Cityscapes label id: the GT (always labelIds)
    and, in labelIds format, the prediction."""
    found = []
    gt_bad = unknown_ids(np.flatnonzero(hist.sum(1)), CITYSCAPES_RAW_IDS)
    if gt_bad:
        found.append(f"{gt_path}: values {gt_bad[:10]}")
    pred_bad = unknown_ids(np.flatnonzero(hist.sum(0)), CITYSCAPES_RAW_IDS)
    if fmt == "labelIds" and pred_bad:
        found.append(f"{pred_path}: values {pred_bad[:10]}")
    return found


def _raise_bad_values(fmt: str, invalid: list[str], classless: list[str]) -> None:
    """One DatasetError listing every file with values outside its format."""
    parts = []
    if classless:
        which = "ground truth and labelIds predictions" if fmt == "labelIds" else "ground truth"
        parts.append(f"{which} may hold only Cityscapes label ids "
                     f"{describe_ids(CITYSCAPES_RAW_IDS)}; these files hold values that belong to "
                     "no class (a label map of another dataset? a colour or instance map?):\n"
                     + _listing("files with other values", sorted(classless)))
    if invalid:
        parts.append(f"fmt='trainIds' predictions must contain only 0..{NUM_CLASSES - 1} and "
                     f"{IGNORE_INDEX} (non-evaluated); were labelIds passed as trainIds?\n"
                     + _listing("predictions with other values", sorted(invalid)))
    if parts:
        raise DatasetError("\n".join(parts))


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def evaluate_pred_dir(pred_dir: str | os.PathLike, gt_root: str | os.PathLike, split: str = "val",
                      fmt: str = "labelIds", num_classes: int = NUM_CLASSES,
                      num_workers: int | None = None) -> dict:
    """Evaluate a folder of prediction PNGs against Cityscapes `gtFine/<split>` labelIds.

    Returns a JSON-serialisable dict (percentages; None where the official evaluator gives NaN):
      mIoU, per_class_iou {class name: IoU | None}, pixel_accuracy, fwIoU, num_images, num_pixels
      (evaluated GT pixels), confusion_matrix (19x19 list, rows = GT trainId, cols = predicted
      trainId), predicted_ignore (per GT class: pixels predicted as a non-evaluated id), format,
      split. Raises `DatasetError` listing every unmatched / ambiguous / mis-sized prediction.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if num_classes != NUM_CLASSES:
        raise ValueError(f"Cityscapes ground truth has {NUM_CLASSES} evaluated classes; "
                         f"num_classes={num_classes} is not supported")
    gt_files = find_gt_files(gt_root, split)
    preds = match_predictions(pred_dir, gt_files)
    pairs = [(gt_files[k], preds[k]) for k in gt_files]
    check_pairs(pairs)

    workers = num_workers or _default_workers()
    hist = np.zeros((256, 256), dtype=np.int64)
    invalid: list[str] = []
    classless: list[str] = []
    out_of_range: list[tuple[Path, list[int]]] = []

    def consume(pair_hist: np.ndarray, gt_path: Path, pred_path: Path) -> None:
        nonlocal hist
        hist += pair_hist
        classless.extend(_classless_ids(pair_hist, gt_path, pred_path, fmt))
        if fmt == "trainIds":
            bad = _invalid_train_ids(pair_hist)
            if bad:
                invalid.append(f"{pred_path}: values {bad}")

    def histogram(pair):
        return pair_histogram(*pair, out_of_range=out_of_range)  # (list.append: thread-safe)

    if workers == 1 or len(pairs) == 1:
        for gt, pred in pairs:
            consume(histogram((gt, pred)), gt, pred)
    else:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            for (gt, pred), h in zip(pairs, ex.map(histogram, pairs)):
                consume(h, gt, pred)
    gt_set = set(gt_files.values())
    for path, values in out_of_range:
        (classless if path in gt_set or fmt == "labelIds" else invalid).append(f"{path}: values {values}")
    _raise_bad_values(fmt, invalid, classless)
    return results_from_cm20(fold_histogram(hist, fmt), num_images=len(pairs), fmt=fmt, split=split)


def results_from_cm20(cm20: np.ndarray, num_images: int, fmt: str = "labelIds",
                      split: str = "val") -> dict:
    """Scores from a (20, 20) matrix whose column 19 holds non-evaluated predictions (row 19 = 0)."""
    cm20 = np.asarray(cm20, dtype=np.int64)
    out = results_dict(torch.from_numpy(cm20), num_images, CLASS_NAMES)
    out.update(num_pixels=int(cm20.sum()), format=fmt, split=split)
    return out
