"""GTA5 (Richter et al. 2016): `images/NNNNN.png` and `labels/NNNNN.png`.

Labels are palette PNGs whose indices are Cityscapes label ids (read with PIL: cv2 would return
the palette colours). Split: `list_file`, else `<root>/<split>.txt` when present, else every image
(the UDA convention trains on all 24,966 frames).
"""
from __future__ import annotations

from pathlib import Path

from datamodules.datasets.base import Sample, SegmentationDataset, two_folder_inventory
from datamodules.labels import CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_RAW_IDS

_IMAGE_EXT = (".png", ".jpg", ".jpeg")


class GTA5Dataset(SegmentationDataset):
    dataset_name = "gta5"
    id_lut = CITYSCAPES_ID_TO_TRAINID
    raw_ids = CITYSCAPES_RAW_IDS  # palette indices are Cityscapes label ids

    def __init__(self, root, split="train", transform=None, labelled=True, list_file=None,
                 prepared=None):
        if list_file is None and (Path(root) / f"{split}.txt").is_file():
            list_file = Path(root) / f"{split}.txt"
        super().__init__(root, split, transform, labelled, list_file, prepared)

    def layout_hint(self) -> str:
        return "expected <root>/images/NNNNN.png and <root>/labels/NNNNN.png"

    def discover(self) -> list[Sample]:
        images = {p.stem: p for p in sorted((self.root / "images").glob("*"))
                  if p.suffix.lower() in _IMAGE_EXT}
        labels = {p.stem: p for p in sorted((self.root / "labels").glob("*.png"))}
        return [Sample(images[n], labels.get(n), n) for n in sorted(images)]

    def inventory(self):
        return two_folder_inventory(self.discover(), self.root / "labels"), []

    def expected_label_path(self, sample: Sample) -> str:
        return str(self.root / "labels" / f"{sample.name}.png")
