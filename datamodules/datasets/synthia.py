"""SYNTHIA-RAND-CITYSCAPES: `RGB/NNNNNNN.png` and `GT/LABELS/NNNNNNN.png`.

Labels are 16-bit multi-channel PNGs whose first (R) channel holds the SYNTHIA class id; they are
mapped to the 19 Cityscapes trainIds (16 classes present; terrain, truck, train never occur), so
results are reported as mIoU16 and mIoU13 (without wall, fence, pole).
Split: `list_file`, else `<root>/<split>.txt` when present, else every image.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from datamodules.datasets.base import Sample, SegmentationDataset, two_folder_inventory
from datamodules.image_io import DatasetError, read_label
from datamodules.labels import SYNTHIA_ID_TO_TRAINID


class SynthiaDataset(SegmentationDataset):
    dataset_name = "synthia"
    id_lut = SYNTHIA_ID_TO_TRAINID
    raw_ids = tuple(range(23))

    def __init__(self, root, split="train", transform=None, labelled=True, list_file=None,
                 prepared=None):
        if list_file is None and (Path(root) / f"{split}.txt").is_file():
            list_file = Path(root) / f"{split}.txt"
        super().__init__(root, split, transform, labelled, list_file, prepared)

    def layout_hint(self) -> str:
        return "expected <root>/RGB/NNNNNNN.png and <root>/GT/LABELS/NNNNNNN.png"

    def discover(self) -> list[Sample]:
        images = {p.stem: p for p in sorted((self.root / "RGB").glob("*.png"))}
        labels = {p.stem: p for p in sorted((self.root / "GT" / "LABELS").glob("*.png"))}
        return [Sample(images[n], labels.get(n), n) for n in sorted(images)]

    def inventory(self):
        return two_folder_inventory(self.discover(), self.root / "GT" / "LABELS"), []

    def expected_label_path(self, sample: Sample) -> str:
        return str(self.root / "GT" / "LABELS" / f"{sample.name}.png")

    def read_raw_label(self, path: Path) -> np.ndarray:
        # 16-bit colour PNGs: PIL cannot hold 16 bits per channel, so read with cv2 (BGR order).
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            if not Path(path).is_file():
                raise DatasetError(f"{path}: label file not found")
            raw = read_label(path)  # e.g. a single-channel 8/16-bit file; raises a clear error
        if raw.ndim == 3:
            raw = raw[:, :, 2]  # cv2 gives B, G, R(, A): the class id is the file's first channel
        return raw.astype(np.uint16) if raw.dtype != np.uint8 else raw
