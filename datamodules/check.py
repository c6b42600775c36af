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
from pathlib import Path

import numpy as np

from datamodules.datasets import DATASETS
from datamodules.datasets.base import Sample, SegmentationDataset, size_mismatch
from datamodules.image_io import DatasetError, read_rgb
from datamodules.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES


def _check_one(ds: SegmentationDataset, s: Sample) -> tuple[np.ndarray, list[str], list[str]]:
    """Class histogram (20 bins: 19 classes + ignore), problems, warnings for one sample."""
    hist = np.zeros(NUM_CLASSES + 1, dtype=np.int64)
    problems: list[str] = []
    warnings: list[str] = []
    img_hw = None
    if s.image is not None:
        try:
            img_hw = read_rgb(s.image).shape[:2]  # full decode: catches truncated files
        except DatasetError as e:
            problems.append(str(e))
    if s.label is not None:
        try:
            raw = ds.read_raw_label(s.label)
        except DatasetError as e:
            problems.append(str(e))
            return hist, problems, warnings
        try:
            ds.check_label_values(s.label, raw)  # the check training and evaluation apply
        except DatasetError as e:
            problems.append(str(e))
        train_ids = ds.lut_for(s.label)[raw]
        train_ids = np.where(train_ids == IGNORE_INDEX, NUM_CLASSES, train_ids)
        hist += np.bincount(train_ids.ravel(), minlength=NUM_CLASSES + 1)[: NUM_CLASSES + 1]
        if img_hw is not None and tuple(raw.shape[:2]) != tuple(img_hw):
            warnings.append(size_mismatch(s.label, raw.shape, img_hw))
    return hist, problems, warnings


def check_dataset(dataset: str, root: str | Path, split: str, workers: int = 4) -> dict:
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}")
    root = Path(root)
    result = {"dataset": dataset, "root": str(root), "split": split, "num_images": 0,
              "num_labels": 0, "class_pixels": {n: 0 for n in CLASS_NAMES}, "ignored_pixels": 0,
              "problems": [], "warnings": []}
    if not root.is_dir():
        result["problems"].append(f"{root}: dataset root not found")
        return result
    ds = DATASETS[dataset].for_inspection(root, split)
    samples, problems = ds.inventory()
    result["problems"] += problems
    images = [s for s in samples if s.image is not None]
    labels = [s for s in samples if s.label is not None]
    result["num_images"], result["num_labels"] = len(images), len(labels)
    if not samples:
        result["problems"].append(f"{root}: no files for split '{split}' ({ds.layout_hint()})")
        return result
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
    hist = np.zeros(NUM_CLASSES + 1, dtype=np.int64)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL/cv2 decode releases the GIL
        for h, p, w in pool.map(lambda s: _check_one(ds, s), samples):
            hist += h
            result["problems"] += p
            result["warnings"] += w
    result["class_pixels"] = {n: int(c) for n, c in zip(CLASS_NAMES, hist[:NUM_CLASSES])}
    result["ignored_pixels"] = int(hist[NUM_CLASSES])
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
