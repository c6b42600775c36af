"""`uda data check`: validate a dataset split file by file and count class pixels.

Result (JSON-serialisable):
  {"dataset", "root", "split", "num_images": int, "num_labels": int,
   "class_pixels": {<19 trainId class names>: int}, "ignored_pixels": int,
   "problems": [str], "warnings": [str]}
Pixel counts are in trainId space at each label file's native resolution. A split is usable when
`problems` is empty; `warnings` (label/image size mismatch, label-only or unlabelled split) do not
make it unusable.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from datamodules.datasets import DATASETS
from datamodules.datasets.base import Sample, SegmentationDataset, size_mismatch
from datamodules.image_io import DatasetError, read_rgb
from datamodules.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES


@dataclass
class Examined:
    """One sample as `data check` sees it: class histogram (20 bins: 19 classes + ignore, at the
    label's native size), problems, warnings, and the decoded image and trainIds (None when
    absent or unreadable)."""
    hist: np.ndarray
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    image: Optional[np.ndarray] = None
    train_ids: Optional[np.ndarray] = None


def examine(ds: SegmentationDataset, s: Sample) -> Examined:
    """Decode and check one sample (`data check`'s work, also `data prepare`'s first step)."""
    e = Examined(np.zeros(NUM_CLASSES + 1, dtype=np.int64))
    if s.image is not None:
        try:
            e.image = read_rgb(s.image)  # full decode: catches truncated files
        except DatasetError as err:
            e.problems.append(str(err))
    if s.label is not None:
        try:
            raw = ds.read_raw_label(s.label)
        except DatasetError as err:
            e.problems.append(str(err))
            return e
        try:
            ds.check_label_values(s.label, raw)  # the check training and evaluation apply
        except DatasetError as err:
            e.problems.append(str(err))
        e.train_ids = ds.lut_for(s.label)[raw]
        e.hist += class_histogram(e.train_ids)
        if e.image is not None and tuple(raw.shape[:2]) != tuple(e.image.shape[:2]):
            e.warnings.append(size_mismatch(s.label, raw.shape, e.image.shape))
    return e


def class_histogram(train_ids: np.ndarray) -> np.ndarray:
    """Pixels per trainId (19 bins) and ignored pixels (bin 19) of a trainIds map."""
    ids = np.where(train_ids == IGNORE_INDEX, NUM_CLASSES, train_ids)
    return np.bincount(ids.ravel(), minlength=NUM_CLASSES + 1)[: NUM_CLASSES + 1]


def _check_one(ds: SegmentationDataset, s: Sample) -> tuple[np.ndarray, list[str], list[str]]:
    e = examine(ds, s)
    return e.hist, e.problems, e.warnings


def open_split(dataset: str, root: str | Path, split: str
               ) -> tuple[dict, Optional[SegmentationDataset], list[Sample]]:
    """The result to fill, the dataset and every sample of the split to examine (none when the
    root or the split's files are missing: the result then holds the problem)."""
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}")
    root = Path(root)
    result = {"dataset": dataset, "root": str(root), "split": split, "num_images": 0,
              "num_labels": 0, "class_pixels": {n: 0 for n in CLASS_NAMES}, "ignored_pixels": 0,
              "problems": [], "warnings": []}
    if not root.is_dir():
        result["problems"].append(f"{root}: dataset root not found")
        return result, None, []
    ds = DATASETS[dataset].for_inspection(root, split)
    samples, problems = ds.inventory()
    result["problems"] += problems
    images = [s for s in samples if s.image is not None]
    labels = [s for s in samples if s.label is not None]
    result["num_images"], result["num_labels"] = len(images), len(labels)
    if not samples:
        result["problems"].append(f"{root}: no files for split '{split}' ({ds.layout_hint()})")
        return result, ds, []
    if not images:
        result["warnings"].append(f"{root}: split '{split}' has labels but no images: usable as "
                                  "evaluation ground truth (uda evaluate-dir) only")
    elif not labels:
        result["warnings"].append(f"{root}: split '{split}' has no labels: usable as unlabelled "
                                  "target data only")
    else:
        for s in samples:
            if s.label is None:
                result["problems"].append(f"{s.image}: image has no label "
                                          f"(expected {ds.expected_label_path(s)})")
            elif s.image is None:
                result["problems"].append(f"{s.label}: label has no image")
    return result, ds, samples


def set_class_pixels(result: dict, hist: np.ndarray) -> None:
    result["class_pixels"] = {n: int(c) for n, c in zip(CLASS_NAMES, hist[:NUM_CLASSES])}
    result["ignored_pixels"] = int(hist[NUM_CLASSES])


def check_dataset(dataset: str, root: str | Path, split: str, workers: int = 4) -> dict:
    result, ds, samples = open_split(dataset, root, split)
    hist = np.zeros(NUM_CLASSES + 1, dtype=np.int64)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL/cv2 decode releases the GIL
        for h, p, w in pool.map(lambda s: _check_one(ds, s), samples):
            hist += h
            result["problems"] += p
            result["warnings"] += w
    set_class_pixels(result, hist)
    return result


def format_report(result: dict) -> str:
    total = sum(result["class_pixels"].values()) + result["ignored_pixels"]
    lines = [f"{result['dataset']} split '{result['split']}' at {result['root']}: "
             f"{result['num_images']} images, {result['num_labels']} labels",
             f"{'class':<15}{'pixels':>14}{'share %':>9}"]
    for name, count in result["class_pixels"].items():
        lines.append(f"{name:<15}{count:>14}{100.0 * count / max(total, 1):>9.2f}")
    lines.append(f"{'(ignored)':<15}{result['ignored_pixels']:>14}"
                 f"{100.0 * result['ignored_pixels'] / max(total, 1):>9.2f}")
    for w in result["warnings"]:
        lines.append(f"warning: {w}")
    for p in result["problems"]:
        lines.append(f"problem: {p}")
    return "\n".join(lines)  # whether the split is usable: the CLI's last line
