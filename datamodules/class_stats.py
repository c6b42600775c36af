"""Per-image class pixel counts of a labelled split (rare-class sampling), computed once.

The counts live in the split's `class_stats.jsonl` in the dataset's prepared folder
(`datamodules.prepared`: `<root>/.uda_prepared/<split>/` unless `prepared` names another), one
line per label file: its signature [path relative to the root, size, mtime in ns] and the pixels
of the 19 trainIds + ignore at the label's native size. `uda data prepare` writes them; a run
start reads them and computes (and appends) only those of label files it has no line for: a
new list file, added or changed label files. Nothing is written when the folder is not writable
or `prepared` is false; the message says so and how to change it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from datamodules.check import class_histogram
from datamodules.labels import NUM_CLASSES
from datamodules.prepared import (append_jsonl, as_signature, ensure_folder, read_jsonl,
                                  signature)


def class_counts(dataset, num_classes: int = NUM_CLASSES) -> tuple[torch.Tensor, str]:
    """((N, num_classes) int64 counts of `dataset.samples`' labels, a message saying where they
    came from). Same values as `datamodules.debias.sampling.dataset_class_counts`."""
    folder = dataset.prepared_folder
    path = folder / dataset.split / "class_stats.jsonl" if folder is not None else None
    cached = {as_signature(r["label"]): r["counts"] for r in read_jsonl(path)} if path else {}
    sigs = [signature(dataset.root, s.label) for s in dataset.samples]
    missing = [k for k, sig in enumerate(sigs) if sig not in cached]
    new = {sigs[k]: _counts(dataset, dataset.samples[k].label) for k in missing}
    stored = _store(dataset, path, new) if new else None
    table = np.array([cached.get(sig) or new[sig] for sig in sigs], dtype=np.int64)
    table = table.reshape(len(sigs), NUM_CLASSES + 1)[:, :min(num_classes, NUM_CLASSES)]
    if num_classes > NUM_CLASSES:
        table = np.pad(table, ((0, 0), (0, num_classes - NUM_CLASSES)))
    what = f"class statistics of {len(sigs)} {dataset.dataset_name} {dataset.split} labels"
    if not missing:
        return torch.from_numpy(table), f"{what} read from {path}"
    why = "first run" if not cached else "new or changed label files"
    done = f"computed {len(missing)} of them ({why})"
    return torch.from_numpy(table), f"{what}: {done}; {stored}"


def _counts(dataset, label: Path) -> list[int]:
    return [int(v) for v in class_histogram(dataset.load_label(label))]


def _store(dataset, path: Optional[Path], new: dict) -> str:
    """Append the new counts; what was done, for the message."""
    if path is None:
        return "not cached (prepared=false); unset it to cache them"
    try:
        ensure_folder(path.parent.parent, dataset.dataset_name, dataset.root)
        path.parent.mkdir(exist_ok=True)
        append_jsonl(path, [{"label": list(sig), "counts": c} for sig, c in new.items()])
    except OSError as e:
        return (f"not cached ({e.filename or path}: {e.strerror or e}); set "
                "data.<domain>.prepared to a writable folder or run `uda data prepare --out DIR` "
                "once")
    return f"cached in {path} for the next runs (`uda data prepare` computes them ahead)"
