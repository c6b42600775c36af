"""Base segmentation dataset: a list of samples (image, label, name) in one official layout.

Item contract (`__getitem__`): a dict with
  image: float32 tensor (3, H, W), normalised by the transform;
  mask:  int64 tensor (H, W) of trainIds in {0..18, 255} (only when `labelled`);
  name:  str, the sample's stem (e.g. 'aachen_000000_000019' or '00001').
The index may be an int, or a pair (index, seed) from the training samplers: the seed then drives
the random transforms of that draw, so augmentation is reproducible whatever the worker count.

Every label file read is checked as `uda data check` checks it: a value that is no label id of
the format (e.g. 200 in a Cityscapes labelIds map) raises `DatasetError` naming the file. A label
whose size differs from its image's is resized to it (nearest), with a warning naming the file
(once per file and process), as `data check` reports it.

Prepared files (`uda data prepare`, `datamodules.prepared`): `prepared` None finds
`<root>/.uda_prepared`, a folder names another, False ('false', 'off') reads the originals only.
A sample whose originals are unchanged since they were prepared is read from its trainIds map
and, when the transform starts with a resize that was prepared, from its resized copies; the
items are the same as from the originals.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datamodules.image_io import DatasetError, read_label, read_rgb
from datamodules.labels import IGNORE_INDEX, NUM_CLASSES, describe_ids, map_ids, unknown_ids
from datamodules.prepared import find_prepared, read_prepared_label


@dataclass(frozen=True)
class Sample:
    image: Optional[Path]
    label: Optional[Path]
    name: str


# transform(image HxWx3 uint8, mask HxW uint8 | None, rng | None) -> (image tensor, mask tensor|None)
Transform = Callable[[np.ndarray, Optional[np.ndarray], Optional[np.random.Generator]], tuple]


class SegmentationDataset(Dataset):
    """Subclasses implement `discover()` (the layout) and set `id_lut` (raw id -> trainId table);
    formats with several label kinds override `lut_for`/`valid_raw_ids`."""

    dataset_name = "base"
    id_lut: np.ndarray
    #: Raw label values that are legitimate in this format (others are reported by `data check`).
    raw_ids: Sequence[int] = ()

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None,
                 labelled: bool = True, list_file: str | Path | None = None,
                 prepared: str | Path | None = None):
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.labelled = labelled
        self.list_file = Path(list_file) if list_file else None
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: {self.dataset_name} root directory not found "
                               f"(set data.source.root / data.target.root to the dataset folder)")
        self.prepared_folder, self.prepared = find_prepared(
            self.root, split, self.dataset_name,
            prepared if prepared is None or prepared is False else str(prepared))
        self.samples: list[Sample] = self.select(self.discover())
        if not self.samples:
            raise DatasetError(f"{self.root}: no {self.dataset_name} images found for split "
                               f"'{split}' ({self.layout_hint()})")
        if labelled:
            missing = [s.name for s in self.samples if s.label is None]
            if missing:
                raise DatasetError(
                    f"{self.root}: {len(missing)} image(s) of split '{split}' have no label file, "
                    f"e.g. {missing[:3]} ({self.layout_hint()}); run `uda data check` for details")

    # --- per-format hooks -------------------------------------------------------------------
    def discover(self) -> list[Sample]:
        raise NotImplementedError

    def layout_hint(self) -> str:
        raise NotImplementedError

    def read_raw_label(self, path: Path) -> np.ndarray:
        """Raw ids of a label file (HxW integer array)."""
        return read_label(path)

    def lut_for(self, path: Path) -> np.ndarray:
        return self.id_lut

    def valid_raw_ids(self, path: Path) -> Sequence[int]:
        return self.raw_ids

    def label_kind(self, path: Path) -> str:
        """What the values of the label file are, for messages."""
        return "label ids"

    def check_label_values(self, path: Path, raw: np.ndarray) -> None:
        """DatasetError naming `path` when `raw` holds a value that is no label id of its format."""
        valid = self.valid_raw_ids(path)
        bad = unknown_ids(raw, valid)
        if bad:
            raise DatasetError(
                f"{path}: unexpected label value(s) {bad[:10]} for {self.dataset_name} "
                f"{self.label_kind(path)} (valid: {describe_ids(valid)}); is this a label map of "
                "this dataset? Replace or remove the file (`uda data check` lists every such file)")

    def load_label(self, path: Path) -> np.ndarray:
        """Label file -> HxW uint8 trainIds (255 = ignore), at the file's native size; its values
        are checked (`check_label_values`)."""
        raw = self.read_raw_label(path)
        self.check_label_values(path, raw)
        return map_ids(raw, self.lut_for(path))

    def inventory(self) -> tuple[list[Sample], list[str]]:
        """Every sample found on disk, including labels without an image (image=None), plus
        layout problems that `discover` cannot express. Used by `data check`."""
        raise NotImplementedError

    def expected_label_path(self, sample: Sample) -> str:
        raise NotImplementedError

    @classmethod
    def for_inspection(cls, root: str | Path, split: str) -> "SegmentationDataset":
        """An instance that only knows where to look (no validation): for `data check`."""
        self = cls.__new__(cls)
        self.root, self.split, self.transform, self.labelled = Path(root), split, None, True
        self.list_file = None
        self.prepared_folder, self.prepared = None, None
        return self

    # --- common ----------------------------------------------------------------------------
    def select(self, samples: list[Sample]) -> list[Sample]:
        """Keep only the names in `list_file` (one name or file name per line) when given."""
        if self.list_file is None:
            return samples
        if not self.list_file.is_file():
            raise DatasetError(f"{self.list_file}: split list file not found")
        wanted = [Path(line.strip()).stem for line in self.list_file.read_text().splitlines()
                  if line.strip()]
        by_name = {s.name: s for s in samples}
        unknown = [w for w in wanted if w not in by_name]
        if unknown:
            raise DatasetError(f"{self.list_file}: {len(unknown)} listed name(s) have no image "
                               f"under {self.root}, e.g. {unknown[:3]}")
        return [by_name[w] for w in wanted]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Image (HxWx3 uint8) and trainId mask at the image's size (nearest resize if the label
        file's size differs, as some GTA5 labels do), or None when unlabelled."""
        s = self.samples[i]
        image = read_rgb(s.image)
        if not self.labelled or s.label is None:
            return image, None
        return image, self.mask_at(s, image.shape[:2])

    def mask_at(self, s: Sample, image_hw: tuple) -> np.ndarray:
        """The trainId mask of `s` at its image's size `image_hw` (prepared when available)."""
        prepared = self.prepared.native_label(s) if self.prepared is not None else None
        if prepared is not None:
            return read_prepared_label(prepared)
        mask = self.load_label(s.label)
        if mask.shape != tuple(image_hw):
            warnings.warn(size_mismatch(s.label, mask.shape, image_hw), stacklevel=3)
            mask = np.asarray(Image.fromarray(mask).resize(
                (image_hw[1], image_hw[0]), Image.NEAREST))
        return mask

    def load_for_transform(self, i: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """What `__getitem__` hands the transform: `load(i)`, or the copies prepared at the
        transform's resize, which its resize op then leaves unchanged (same item)."""
        size = getattr(self.transform, "resize", None)
        s = self.samples[i]
        with_label = self.labelled and s.label is not None
        label_resized = getattr(self.transform, "transform_mask", True)
        files = self.prepared.resized(s, size, with_label, label_resized) \
            if self.prepared is not None and size is not None else None
        if files is None:
            return self.load(i)
        image = read_rgb(files[0])
        return image, read_prepared_label(files[1]) if with_label else None

    def __getitem__(self, index):
        i, seed = index if isinstance(index, tuple) else (index, None)
        image, mask = self.load_for_transform(i)
        rng = np.random.default_rng(seed) if seed is not None else None
        if self.transform is not None:
            image_t, mask_t = self.transform(image, mask, rng)
        else:
            image_t = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
            mask_t = torch.from_numpy(mask.astype(np.int64)) if mask is not None else None
        item = {"image": image_t, "name": self.samples[i].name}
        if mask_t is not None:
            item["mask"] = mask_t
        return item


def size_mismatch(label: Path, label_hw: tuple, image_hw: tuple) -> str:
    """The message for a label whose size differs from its image's (the documented policy)."""
    return (f"{label}: label size {label_hw[1]}x{label_hw[0]} differs from image size "
            f"{image_hw[1]}x{image_hw[0]}; resized (nearest) when loaded")


def check_mask_values(mask: np.ndarray) -> None:
    """Assert the trainId contract; used by tests and debugging."""
    bad = np.setdiff1d(np.unique(mask), np.r_[np.arange(NUM_CLASSES), IGNORE_INDEX])
    if bad.size:
        raise AssertionError(f"mask has values outside {{0..18, 255}}: {bad.tolist()}")


def two_folder_inventory(samples: list[Sample], label_dir: Path) -> list[Sample]:
    """`samples` plus label files of `label_dir` that have no image (as image=None samples)."""
    have = {s.name for s in samples}
    orphans = [Sample(None, p, p.stem) for p in sorted(label_dir.glob("*.png")) if p.stem not in have]
    return samples + orphans
