"""`uda data prepare`: one pass over a dataset split that checks every file as `uda data check`
does and writes, into a prepared folder (layout: `datamodules.prepared`), each sample's trainIds
map, its copies resized to the training scales asked for, and the class statistics.

Originals are only read. Every file is written atomically (temp file + rename) and a sample is
recorded in samples.jsonl only once all its files exist, so an interrupted run leaves no file
that a later run or a dataset takes for done: the next run redoes what is unrecorded and skips
samples whose record, originals and files are all still there. Samples with a problem are not
prepared (the datasets then read their originals, and stop on the problem as they always did).
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from datamodules.check import examine, open_split, set_class_pixels
from datamodules.datasets.base import Sample, SegmentationDataset, size_mismatch
from datamodules.image_io import DatasetError, write_png_atomic
from datamodules.labels import NUM_CLASSES
from datamodules.prepared import (AUTO_FOLDER, MARKER, append_jsonl, as_signature,
                                  ensure_folder, read_jsonl, signature, size_name, writable)
from datamodules.atomic_write import write_json_atomic

Result = tuple  # (hist (20,), problems, warnings, record or None)


def default_workers() -> int:
    """The usable cores, at most 8."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not Linux
        return max(1, min(8, os.cpu_count() or 1))


def output_folder(root: Path, out: Optional[str | os.PathLike]) -> Path:
    """`out`, or <root>/.uda_prepared; DatasetError for a folder that holds something else."""
    folder = Path(out) if out is not None else root / AUTO_FOLDER
    if folder.resolve() == root.resolve() or folder.resolve() in root.resolve().parents:
        raise DatasetError(f"--out {folder}: the dataset's own folder (or one above it); give a "
                           f"separate folder, e.g. {root / AUTO_FOLDER}")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise DatasetError(f"--out {folder}: not empty and not a prepared folder (no {MARKER}); "
                           "give an empty or new folder")
    if not writable(folder):
        option = "--out" if out is not None else "--root"
        raise DatasetError(f"{option} {folder if out is not None else root}: read-only, the "
                           f"prepared files cannot be written there; give --out DIR (a writable "
                           "folder) and set data.source.prepared / data.target.prepared to it")
    return folder


def prepare_dataset(dataset: str, root: str | os.PathLike, split: str,
                    out: Optional[str | os.PathLike] = None, sizes: Sequence = (),
                    workers: int = 1, progress: bool = False) -> dict:
    """Prepare one split; returns {"folder", "prepared": samples written, "skipped": samples
    already done, "result"}, result being `uda data check`'s (also <folder>/<split>/stats.json)."""
    root = Path(root)
    result, ds, samples = open_split(dataset, root, split)
    if ds is None:
        raise DatasetError(f"--root {root}: no such folder; give the {dataset} root")
    folder = output_folder(root, out)
    ensure_folder(folder, dataset, root)
    split_dir = folder / split
    split_dir.mkdir(parents=True, exist_ok=True)
    sizes = sorted({size_name(s) for s in sizes})
    done = {r["name"]: r for r in read_jsonl(split_dir / "samples.jsonl")}
    plan = [_plan(root, split_dir, sizes, s, done.get(s.name)) for s in samples]
    todo = [(s, job_sizes) for s, (record, job_sizes) in zip(samples, plan) if record is None]
    hist, prepared = np.zeros(NUM_CLASSES + 1, dtype=np.int64), 0
    bar = _bar(len(samples), split, progress)
    results = _run(ds, split_dir, todo, workers)
    try:
        for s, (record, _) in zip(samples, plan):
            h, problems, warnings, new = _recorded(root, s, record) if record is not None \
                else next(results)
            hist += h
            result["problems"] += problems
            result["warnings"] += warnings
            if new is not None:
                _journal(split_dir, new)
                prepared += 1
            bar.update()
    finally:
        results.close()
        bar.close()
    set_class_pixels(result, hist)
    write_json_atomic(split_dir / "stats.json", result)
    return {"folder": str(folder), "prepared": prepared,
            "skipped": sum(record is not None for record, _ in plan), "result": result}


def _plan(root: Path, split_dir: Path, sizes: list[str], s: Sample, record: Optional[dict]):
    """(the record when `s` is done, else None; the sizes a new pass must write)."""
    if s.image is None:  # a label without image: checked, nothing to prepare
        return None, []
    if record is None:
        return None, sizes
    wanted = sorted(set(sizes) | set(record["sizes"]))
    current = as_signature(record["image"]) == signature(root, s.image) and \
        as_signature(record["label"]) == signature(root, s.label)
    if current and set(sizes) <= set(record["sizes"]) and \
            all(p.is_file() for p in _outputs(split_dir, s, record["sizes"])):
        return record, wanted
    return None, wanted


def _outputs(split_dir: Path, s: Sample, sizes) -> list[Path]:
    files = [split_dir / "labels" / f"{s.name}.png"] if s.label is not None else []
    for size in sizes:
        files.append(split_dir / size / "images" / f"{s.name}.png")
        if s.label is not None:
            files.append(split_dir / size / "labels" / f"{s.name}.png")
    return files


def _recorded(root: Path, s: Sample, record: dict) -> Result:
    """A done sample's contribution to the statistics, from its record."""
    warnings = []
    if s.label is not None and record["label_hw"] != record["image_hw"]:
        warnings.append(size_mismatch(s.label, record["label_hw"], record["image_hw"]))
    return np.asarray(record["counts"], dtype=np.int64), [], warnings, None


def _run(ds: SegmentationDataset, split_dir: Path, todo: list, workers: int) -> Iterator[Result]:
    """Results of the samples to prepare, in order; in this process for one worker."""
    work = partial(prepare_one, ds, split_dir)
    if workers <= 1 or len(todo) <= 1:
        yield from map(work, todo)
        return
    pool = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_quiet_worker)
    try:
        yield from pool.map(work, todo, chunksize=2)
    finally:  # interrupted: drop the queued samples instead of finishing them
        pool.shutdown(wait=True, cancel_futures=True)


def _context():
    """Workers start from a fresh interpreter (forkserver; spawn where there is none): a process
    forked from this one could inherit the locks of OpenCV's or torch's threads and hang."""
    import multiprocessing
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _quiet_worker() -> None:
    """One thread per process (the processes are the parallelism)."""
    import cv2
    cv2.setNumThreads(1)


def prepare_one(ds: SegmentationDataset, split_dir: Path, job: tuple) -> Result:
    """Check one sample and write its files; its record (None when it has a problem)."""
    s, sizes = job
    image_sig, label_sig = signature(ds.root, s.image), signature(ds.root, s.label)
    e = examine(ds, s)
    if e.problems or e.image is None:
        return e.hist, e.problems, e.warnings, None
    hw = e.image.shape[:2]
    mask = None
    if e.train_ids is not None:
        mask = e.train_ids
        if mask.shape != hw:  # as the dataset does: nearest resize to the image's size
            mask = np.asarray(Image.fromarray(mask).resize((hw[1], hw[0]), Image.NEAREST))
        write_png_atomic(Image.fromarray(mask, "L"), split_dir / "labels" / f"{s.name}.png")
    for size in sizes:
        _write_resized(split_dir / size, s.name, e.image, mask, size)
    record = {"name": s.name, "image": image_sig, "label": label_sig, "image_hw": list(hw),
              "label_hw": list(e.train_ids.shape) if e.train_ids is not None else None,
              "sizes": list(sizes), "counts": [int(v) for v in e.hist]}
    return e.hist, e.problems, e.warnings, record


def _write_resized(folder: Path, name: str, image: np.ndarray, mask: Optional[np.ndarray],
                   size: str) -> None:
    from datamodules.transforms import resize_op  # albumentations: only where resizing
    h, w = (int(v) for v in size.split("x"))
    op = resize_op((h, w))
    out = op(image=image, mask=mask) if mask is not None else op(image=image)
    write_png_atomic(Image.fromarray(out["image"], "RGB"), folder / "images" / f"{name}.png")
    if mask is not None:
        write_png_atomic(Image.fromarray(out["mask"], "L"), folder / "labels" / f"{name}.png")


def _journal(split_dir: Path, record: dict) -> None:
    """Record a sample whose files are all written; its class statistics too (RCS cache)."""
    if record["label"] is not None:
        append_jsonl(split_dir / "class_stats.jsonl",
                     [{"label": record["label"], "counts": record["counts"]}])
    append_jsonl(split_dir / "samples.jsonl", [record])


def _bar(total: int, split: str, progress: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=f"prepare {split}", unit="img", disable=not progress,
                file=sys.stderr)
