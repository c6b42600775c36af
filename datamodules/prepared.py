"""Where the files of `uda data prepare` live and how a dataset reads them.

A prepared folder belongs to one dataset root: by default `<root>/.uda_prepared` (found
automatically), or any folder named by `data.<domain>.prepared` / `uda data prepare --out`:

    uda_prepared.json                   {"format": 1, "dataset": "gta5", "root": "/abs/root"}
    <split>/labels/<name>.png           trainIds (mode L: 0..18, 255), at the image's size
    <split>/<H>x<W>/images/<name>.png   the image resized exactly as the transform's `resize` does
    <split>/<H>x<W>/labels/<name>.png   its trainIds resized likewise (nearest)
    <split>/samples.jsonl               one line per prepared sample, appended after its files
    <split>/class_stats.jsonl           per label file: pixels of the 19 trainIds + ignore
    <split>/stats.json                  the `uda data check` statistics of the split

Each line records the original image and label as a signature [path relative to the root, size,
modification time in ns]. A sample's prepared files are used only while its originals still have
those signatures; otherwise the dataset reads the originals (same samples, slower).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from datamodules.image_io import DatasetError, read_label
from datamodules.labels import TRAIN_IDS, describe_ids, unknown_ids
from datamodules.atomic_write import write_json_atomic

AUTO_FOLDER = ".uda_prepared"
MARKER = "uda_prepared.json"
FORMAT = 1
OFF = ("false", "off")  # YAML reads `false` and `off` as False, which a str key stores as "False"

Signature = tuple  # (relative path: str, size: int, mtime_ns: int)


def signature(root: Path, path: Optional[Path]) -> Optional[Signature]:
    """The signature of an original file (None for no file)."""
    if path is None:
        return None
    st = os.stat(path)
    return (Path(path).relative_to(root).as_posix(), st.st_size, st.st_mtime_ns)


def size_name(size) -> str:
    """[720, 1280] -> '720x1280' (height x width, as the config's resize)."""
    return f"{int(size[0])}x{int(size[1])}"


def resolve_folder(root: Path, setting: Optional[str]) -> Optional[Path]:
    """The prepared folder of `root`: `setting` None (or '') -> <root>/.uda_prepared (which may
    not exist yet), false / 'off' -> None (originals only), else the folder named, which must
    exist."""
    if setting is False or str(setting).lower() in OFF:
        return None
    if not setting:
        return root / AUTO_FOLDER
    folder = Path(setting)
    if not folder.is_dir():
        raise DatasetError(
            f"{folder}: prepared folder not found (the `prepared` setting of the {root} dataset, "
            f"data.source.prepared / data.target.prepared); run `uda data prepare --root {root} "
            f"--out {folder} ...` or unset the key")
    return folder


def writable(folder: Path) -> bool:
    """Whether files may be created in `folder` (or, when missing, in its nearest existing
    ancestor): permitted, and not a folder whose mode says read-only (a privileged user is
    permitted everything, but a dr-xr-xr-x dataset folder still means "leave it alone")."""
    for candidate in (folder, *folder.absolute().parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK) and \
                bool(candidate.stat().st_mode & 0o222)
    return False


def check_marker(folder: Path, dataset: str, root: Path) -> None:
    """DatasetError when `folder` was prepared for another dataset or (for a folder outside the
    root) another root."""
    marker = folder / MARKER
    if not marker.is_file():
        return
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{marker}: unreadable ({e}); delete {folder} and run "
                           "`uda data prepare` again") from None
    other_root = Path(info.get("root", "")).resolve() != root.resolve()
    if info.get("dataset") != dataset or (other_root and folder != root / AUTO_FOLDER):
        raise DatasetError(
            f"{folder}: prepared for {info.get('dataset')} at {info.get('root')}, not for "
            f"{dataset} at {root}; give the folder `uda data prepare` wrote for this root "
            "(data.<domain>.prepared / --out)")


def ensure_folder(folder: Path, dataset: str, root: Path) -> None:
    """Create `folder` with its marker (or check the marker that is there); OSError when it
    cannot be written (`writable`)."""
    check_marker(folder, dataset, root)
    if not writable(folder):
        raise PermissionError(13, "read-only folder", str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if not marker.is_file():
        write_json_atomic(marker, {"format": FORMAT, "dataset": dataset,
                                   "root": str(root.resolve())})


def read_jsonl(path: Path) -> list[dict]:
    """The complete lines of a journal; a torn last line (interrupted append) is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append complete lines in one write (flushed to the file on return), after a newline
    if an interrupted append left the last line torn (so that it stays the only bad line)."""
    if not rows:
        return
    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
    with open(path, "ab+") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                text = "\n" + text
        f.write(text.encode())


def as_signature(value) -> Optional[Signature]:
    return tuple(value) if value is not None else None


@dataclass(frozen=True)
class Entry:
    """What samples.jsonl says of one sample (the last line for its name wins)."""
    image: Signature
    label: Optional[Signature]
    sizes: frozenset


def read_prepared_label(path: Path) -> np.ndarray:
    """A prepared trainIds map (HxW uint8), its values checked."""
    mask = read_label(path)
    bad = unknown_ids(mask, TRAIN_IDS)
    if bad or mask.dtype != np.uint8:
        raise DatasetError(f"{path}: prepared trainIds map holds value(s) {bad[:10]} (valid: "
                           f"{describe_ids(TRAIN_IDS)}); delete the prepared folder's split and "
                           "run `uda data prepare` again")
    return mask


class PreparedSplit:
    """The prepared files of one split, as a dataset uses them."""

    def __init__(self, folder: Path, root: Path):
        self.folder, self.root = folder, root
        self.entries: dict[str, Entry] = {}
        for r in read_jsonl(folder / "samples.jsonl"):
            self.entries[r["name"]] = Entry(as_signature(r["image"]), as_signature(r["label"]),
                                            frozenset(r["sizes"]))
        self._checked: dict[str, tuple[bool, bool]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _current(self, sample) -> tuple[bool, bool]:
        """(image unchanged, image and label unchanged) since `sample` was prepared; checked once
        per sample and process."""
        known = self._checked.get(sample.name)
        if known is None:
            e = self.entries.get(sample.name)
            image_ok = e is not None and e.image == signature(self.root, sample.image)
            label_ok = image_ok and sample.label is not None and \
                e.label == signature(self.root, sample.label)
            known = self._checked[sample.name] = (image_ok, label_ok)
        return known

    def native_label(self, sample) -> Optional[Path]:
        """The sample's trainIds map at its image's size, when prepared from its current files."""
        if sample.label is None or not self._current(sample)[1]:
            return None
        return self.folder / "labels" / f"{sample.name}.png"

    def resized(self, sample, size, with_label: bool, label_resized: bool
                ) -> Optional[tuple[Path, Optional[Path]]]:
        """(image, label) files of `sample` at `size` [h, w], when prepared from its current files:
        label None unless `with_label`; the resized trainIds if `label_resized`, else the native
        ones (evaluation scores at label resolution). None when anything needed is missing."""
        name = size_name(size)
        e = self.entries.get(sample.name)
        image_ok, label_ok = self._current(sample)
        if e is None or name not in e.sizes or not image_ok or (with_label and not label_ok):
            return None
        image = self.folder / name / "images" / f"{sample.name}.png"
        if not with_label:
            return image, None
        label = self.folder / name / "labels" / f"{sample.name}.png" if label_resized else \
            self.folder / "labels" / f"{sample.name}.png"
        return image, label


def find_prepared(root: Path, split: str, dataset: str, setting: Optional[str]
                  ) -> tuple[Optional[Path], Optional[PreparedSplit]]:
    """(prepared folder of the root or None when off, its prepared split or None)."""
    folder = resolve_folder(root, setting)
    if folder is None or not folder.is_dir():
        return folder, None
    check_marker(folder, dataset, root)
    split_dir = folder / split
    if not (split_dir / "samples.jsonl").is_file():
        return folder, None
    prepared = PreparedSplit(split_dir, root)
    return folder, prepared if len(prepared) else None
