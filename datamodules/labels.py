"""Label tables: Cityscapes ids -> trainIds (from cityscapesscripts), SYNTHIA ids -> trainIds.

Contract: every dataset in this package returns masks in the 19-class Cityscapes trainId space,
values in {0..18, IGNORE_INDEX}. The tables here are the only place where raw ids are mapped.
"""
from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

IGNORE_INDEX = 255
NUM_CLASSES = 19

# The 19 evaluation classes, ordered by trainId, named as in cityscapesscripts.
CLASS_NAMES: tuple[str, ...] = tuple(
    lbl.name for lbl in sorted(
        (lbl for lbl in _CS_LABELS if 0 <= lbl.trainId < NUM_CLASSES), key=lambda lbl: lbl.trainId)
)
assert len(CLASS_NAMES) == NUM_CLASSES

# RGB colour per trainId (Cityscapes palette), shape (19, 3) uint8.
TRAINID_COLORS = np.array(
    [next(lbl.color for lbl in _CS_LABELS if lbl.trainId == t) for t in range(NUM_CLASSES)],
    dtype=np.uint8)


def _cityscapes_id_lut() -> np.ndarray:
    """256-entry lookup table: Cityscapes label id -> trainId.

    Ids with trainId 255 or -1 (e.g. 'license plate') and ids not in the table map to ignore.
    """
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lbl in _CS_LABELS:
        if 0 <= lbl.id < 256 and 0 <= lbl.trainId < NUM_CLASSES:
            lut[lbl.id] = lbl.trainId
    return lut


CITYSCAPES_ID_TO_TRAINID = _cityscapes_id_lut()

# Values a Cityscapes labelIds map may hold (GTA5 labels use the same ids): the label ids 0..33
# and 255, 'license plate' (id -1) as stored in uint8. Other values belong to no class.
CITYSCAPES_RAW_IDS: tuple[int, ...] = tuple(range(34)) + (255,)
# Values a trainIds map may hold: the classes and ignore.
TRAIN_IDS: tuple[int, ...] = tuple(range(NUM_CLASSES)) + (IGNORE_INDEX,)

# trainId -> Cityscapes label id, for exporting predictions in the official labelIds format.
TRAINID_TO_CITYSCAPES_ID = np.array(
    [next(lbl.id for lbl in _CS_LABELS if lbl.trainId == t) for t in range(NUM_CLASSES)],
    dtype=np.uint8)

# Cityscapes palette by label id (for writing GTA5-style palette PNGs), 256x3 uint8.
CITYSCAPES_ID_PALETTE = np.zeros((256, 3), dtype=np.uint8)
for _lbl in _CS_LABELS:
    if 0 <= _lbl.id < 256:
        CITYSCAPES_ID_PALETTE[_lbl.id] = _lbl.color

# SYNTHIA-RAND-CITYSCAPES class ids -> Cityscapes trainIds (16 shared classes; the usual UDA
# convention: SYNTHIA has no terrain, truck or train).
SYNTHIA_TO_TRAINID_PAIRS = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10,
    10: 11, 17: 12, 8: 13, 19: 15, 12: 17, 11: 18,
}
SYNTHIA_ID_TO_TRAINID = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
for _sid, _tid in SYNTHIA_TO_TRAINID_PAIRS.items():
    SYNTHIA_ID_TO_TRAINID[_sid] = _tid

# Class subsets for SYNTHIA->Cityscapes reporting (trainIds).
SYNTHIA_16_CLASSES: tuple[int, ...] = tuple(sorted(SYNTHIA_TO_TRAINID_PAIRS.values()))
SYNTHIA_13_CLASSES: tuple[int, ...] = tuple(t for t in SYNTHIA_16_CLASSES if t not in (3, 4, 5))


def map_ids(label: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map a raw id map (any integer dtype, HxW) through `lut`; returns uint8 trainIds."""
    if label.dtype != np.uint8 and label.dtype != np.uint16:
        label = label.astype(np.int64)
        if label.min(initial=0) < 0 or label.max(initial=0) >= len(lut):
            out = np.full(label.shape, IGNORE_INDEX, dtype=np.uint8)
            ok = (label >= 0) & (label < len(lut))
            out[ok] = lut[label[ok]]
            return out
    return lut[label]


def unknown_ids(label: np.ndarray, valid) -> list[int]:
    """The values of `label` (HxW integer array) that are not in `valid`, ascending. One pass over
    the pixels (a histogram for uint8/uint16 maps, ~3 ms for 2 megapixels)."""
    if label.dtype == np.uint8 or label.dtype == np.uint16:
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=1))
    else:
        present = np.unique(label)
    return [int(v) for v in np.setdiff1d(present, np.asarray(valid, dtype=np.int64))]


def describe_ids(ids) -> str:
    """Compact ranges of sorted ids: (0, 1, 2, 3, 255) -> '0-3, 255'."""
    ids, parts, i = sorted(ids), [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ", ".join(parts)
