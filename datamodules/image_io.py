"""Reading and writing image/label files, with errors that name the file.

Images are returned as HxWx3 uint8 RGB (palette or grayscale files are converted).
Label files are returned as raw HxW integer arrays (palette *indices*, never palette colours).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


class DatasetError(ValueError):
    """A dataset file or layout problem; the message names the file and the fix."""


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB. Palette/gray/RGBA images are converted to RGB."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises OSError for truncated files
        raise DatasetError(f"{path}: cannot decode image ({e}); re-download or remove it") from None


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel label map as HxW array of raw ids.

    Palette PNGs (mode P, e.g. GTA5) give their palette indices; 8-bit gray (mode L) its values;
    16-bit gray (I;16 / I) its values as uint16/int32. Colour (RGB) label files are rejected:
    they are colour visualisations, not id maps.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "L"):
                return np.asarray(im, dtype=np.uint8).copy()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im)
                return arr.astype(np.int32) if arr.dtype.kind == "i" else arr.astype(np.uint16)
            raise DatasetError(
                f"{path}: label map has mode {im.mode!r}; expected a palette (P) or gray (L/I;16) PNG "
                "of class ids (a colour visualisation is not a label map)")
    except FileNotFoundError:
        raise DatasetError(f"{path}: label file not found") from None
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot decode label ({e}); re-download or remove it") from None


def image_header(path: str | os.PathLike) -> tuple[str, tuple[int, int]]:
    """(PIL mode, (height, width)) read from the file header only."""
    try:
        with Image.open(path) as im:
            return im.mode, (im.height, im.width)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read header ({e})") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) read from the file header only."""
    return image_header(path)[1]


def write_png_atomic(img: Image.Image, path: str | os.PathLike) -> None:
    """Save a PIL image as PNG via a temp file + rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
