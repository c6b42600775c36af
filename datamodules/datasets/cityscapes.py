"""Cityscapes: `leftImg8bit/<split>/<city>/<key>_leftImg8bit.png` with
`gtFine/<split>/<city>/<key>_gtFine_labelTrainIds.png` (used when present) or `_labelIds.png`
(mapped to trainIds through the official cityscapesscripts table), key = <city>_<seq>_<frame>.

`labelled=False` is the unlabelled target-train mode: no label file is read. Palette-mode images
are converted to RGB by the reader.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from datamodules.datasets.base import Sample, SegmentationDataset
from datamodules.labels import (CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_RAW_IDS, IGNORE_INDEX,
                                NUM_CLASSES, TRAIN_IDS)

IMAGE_SUFFIX = "_leftImg8bit.png"
_GT_RE = re.compile(r"^(?P<key>.+?)_gtFine_(?P<kind>labelIds|labelTrainIds|instanceIds|color|polygons)\.(png|json)$")

_TRAINID_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
_TRAINID_LUT[:NUM_CLASSES] = np.arange(NUM_CLASSES)


class CityscapesDataset(SegmentationDataset):
    dataset_name = "cityscapes"
    id_lut = CITYSCAPES_ID_TO_TRAINID
    raw_ids = CITYSCAPES_RAW_IDS

    def layout_hint(self) -> str:
        return (f"expected <root>/leftImg8bit/{self.split}/<city>/*{IMAGE_SUFFIX} and "
                f"<root>/gtFine/{self.split}/<city>/*_gtFine_labelIds.png")

    def image_files(self) -> dict[str, Path]:
        base = self.root / "leftImg8bit" / self.split
        return {p.name[: -len(IMAGE_SUFFIX)]: p for p in sorted(base.glob(f"*/*{IMAGE_SUFFIX}"))}

    def gt_files(self) -> dict[str, dict[str, Path]]:
        """key -> {kind: path} for every gtFine file of the split."""
        out: dict[str, dict[str, Path]] = {}
        for p in sorted((self.root / "gtFine" / self.split).glob("*/*_gtFine_*")):
            m = _GT_RE.match(p.name)
            if m:
                out.setdefault(m["key"], {})[m["kind"]] = p
        return out

    @staticmethod
    def label_of(kinds: dict[str, Path]) -> Path | None:
        return kinds.get("labelTrainIds") or kinds.get("labelIds")

    def discover(self) -> list[Sample]:
        images = self.image_files()
        gts = self.gt_files() if self.labelled else {}
        return [Sample(p, self.label_of(gts.get(k, {})), k) for k, p in images.items()]

    def inventory(self):
        images, gts = self.image_files(), self.gt_files()
        samples, problems = [], []
        for key in sorted(set(images) | set(gts)):
            kinds = gts.get(key, {})
            label = self.label_of(kinds)
            if kinds and label is None:
                problems.append(f"{self.expected_label_path(Sample(None, None, key))}: missing "
                                f"(found only {', '.join(sorted(p.name for p in kinds.values()))})")
            samples.append(Sample(images.get(key), label, key))
        return samples, problems

    def expected_label_path(self, sample: Sample) -> str:
        city = sample.name.split("_")[0]
        return str(self.root / "gtFine" / self.split / city / f"{sample.name}_gtFine_labelIds.png")

    def lut_for(self, path: Path) -> np.ndarray:
        return _TRAINID_LUT if path.name.endswith("_labelTrainIds.png") else self.id_lut

    def valid_raw_ids(self, path: Path):
        return TRAIN_IDS if path.name.endswith("_labelTrainIds.png") else self.raw_ids

    def label_kind(self, path: Path) -> str:
        return "labelTrainIds" if path.name.endswith("_labelTrainIds.png") else "labelIds"
