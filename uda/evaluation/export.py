"""Writing predictions: Cityscapes labelIds / trainIds maps, colour images and overlays.

Input everywhere: `train_ids`, an (H, W) integer array (any integer dtype, or anything
`np.asarray` turns into one, e.g. a CPU tensor) with values in {0..18, 255 = ignore}; any other
value is a ValueError (it usually means label ids were passed as trainIds).

Files written by `write_prediction(train_ids, out_dir, name, fmt)` (atomically, via
`datamodules.image_io.write_png_atomic`):

* `labelIds` -> `<name>_labelIds.png`: mode L, Cityscapes label ids, ignore -> 0 (unlabeled).
  Ready for the official evaluator and `uda.evaluation.pred_dir` (fmt="labelIds") when `name`
  starts with `<city>_<seq>_<frame>`.
* `trainIds` -> `<name>_trainIds.png`: mode L, trainIds 0..18, ignore stays 255
  (`pred_dir` fmt="trainIds").
* `color` -> `<name>_color.png`: RGB, Cityscapes palette, ignore black.
* `overlay` -> `<name>_overlay.png`: RGB, palette colours blended over `image` (required).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.image_io import write_png_atomic
from datamodules.labels import IGNORE_INDEX, NUM_CLASSES, TRAINID_COLORS, TRAINID_TO_CITYSCAPES_ID

FORMATS = ("labelIds", "trainIds", "color", "overlay")

# 256-entry lookup tables indexed by trainId (only 0..18 and 255 are ever looked up).
_COLOR_LUT = np.zeros((256, 3), dtype=np.uint8)
_COLOR_LUT[:NUM_CLASSES] = TRAINID_COLORS
_LABEL_ID_LUT = np.zeros(256, dtype=np.uint8)  # ignore -> 0 ('unlabeled', never evaluated)
_LABEL_ID_LUT[:NUM_CLASSES] = TRAINID_TO_CITYSCAPES_ID


def _as_train_ids(train_ids) -> np.ndarray:
    """Validate an (H, W) trainId map and return it as uint8."""
    arr = np.asarray(train_ids)
    if arr.ndim != 2:
        raise ValueError(f"train_ids must be an (H, W) map, got shape {arr.shape}")
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        raise ValueError(f"train_ids must have an integer dtype, got {arr.dtype}")
    if arr.dtype != np.uint8:
        bad = (arr < 0) | (arr > 255)
        if bad.any():
            raise ValueError(f"train_ids must contain only 0..{NUM_CLASSES - 1} and {IGNORE_INDEX} "
                             f"(ignore); got values {sorted(set(arr[bad].tolist()))[:10]}")
        arr = arr.astype(np.uint8)
    bad_values = np.setdiff1d(np.unique(arr), np.r_[np.arange(NUM_CLASSES), IGNORE_INDEX])
    if bad_values.size:
        raise ValueError(f"train_ids must contain only 0..{NUM_CLASSES - 1} and {IGNORE_INDEX} "
                         f"(ignore); got values {bad_values[:10].tolist()} (label ids instead of "
                         "trainIds?)")
    return arr


def colorize(train_ids) -> np.ndarray:
    """(H, W) trainIds -> (H, W, 3) uint8 RGB with the Cityscapes palette; ignore -> black."""
    return _COLOR_LUT[_as_train_ids(train_ids)]


def to_label_ids(train_ids) -> np.ndarray:
    """(H, W) trainIds -> (H, W) uint8 Cityscapes label ids; ignore -> 0 (unlabeled)."""
    return _LABEL_ID_LUT[_as_train_ids(train_ids)]


def overlay(image_rgb: np.ndarray, train_ids, alpha: float = 0.5) -> np.ndarray:
    """Blend the palette colours over an image: rint((1 - alpha) * image + alpha * colour).

    image_rgb: (H, W, 3) uint8; train_ids: (H, W) of the same H, W (no resizing is done);
    alpha in [0, 1]; rint rounds halves to even (127.5 -> 128, 162.5 -> 162). Ignored pixels keep
    the image unchanged. Returns (H, W, 3) uint8.
    """
    image = np.asarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got shape {image.shape} "
                         f"dtype {image.dtype}")
    ids = _as_train_ids(train_ids)
    if ids.shape != image.shape[:2]:
        raise ValueError(f"image is {image.shape[0]}x{image.shape[1]} but train_ids is "
                         f"{ids.shape[0]}x{ids.shape[1]} (H x W); resize the prediction first")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * _COLOR_LUT[ids].astype(np.float32)
    out = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    ignored = ids == IGNORE_INDEX
    out[ignored] = image[ignored]
    return out


def prediction_path(out_dir: str | os.PathLike, name: str, fmt: str) -> Path:
    """`out_dir / f"{name}_{fmt}.png"` after validating `fmt` and `name`."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"name must be a plain file-name stem (e.g. 'frankfurt_000000_000294'), "
                         f"got {name!r}")
    return Path(out_dir) / f"{name}_{fmt}.png"


def write_prediction(train_ids, out_dir: str | os.PathLike, name: str, fmt: str = "labelIds",
                     image: np.ndarray | None = None, alpha: float = 0.5) -> Path:
    """Write one prediction as `<out_dir>/<name>_<fmt>.png` (module docstring); returns the path.

    `image` ((H, W, 3) uint8) is required for fmt="overlay" and ignored otherwise. The parent
    folder is created; the file is written atomically.
    """
    path = prediction_path(out_dir, name, fmt)
    if fmt == "labelIds":
        arr = to_label_ids(train_ids)
    elif fmt == "trainIds":
        arr = _as_train_ids(train_ids)
    elif fmt == "color":
        arr = colorize(train_ids)
    else:
        if image is None:
            raise ValueError("fmt='overlay' needs the input image (image=(H, W, 3) uint8)")
        arr = overlay(image, train_ids, alpha)
    # uint8 (H, W) -> mode L, uint8 (H, W, 3) -> mode RGB (fromarray's `mode=` is deprecated)
    write_png_atomic(Image.fromarray(np.ascontiguousarray(arr)), path)
    return path
