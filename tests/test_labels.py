import numpy as np
from cityscapesscripts.helpers.labels import id2label, labels

from datamodules.labels import (CITYSCAPES_ID_TO_TRAINID, CLASS_NAMES, IGNORE_INDEX,
                                SYNTHIA_13_CLASSES, SYNTHIA_16_CLASSES, SYNTHIA_ID_TO_TRAINID,
                                TRAINID_COLORS, TRAINID_TO_CITYSCAPES_ID, map_ids)


def test_id_to_trainid_matches_cityscapesscripts():
    for lbl in labels:
        if lbl.id < 0:
            continue
        expected = lbl.trainId if 0 <= lbl.trainId < 19 else IGNORE_INDEX
        assert CITYSCAPES_ID_TO_TRAINID[lbl.id] == expected, lbl.name
    # ids not in the table (34..254) and 255 map to ignore
    assert set(CITYSCAPES_ID_TO_TRAINID[34:].tolist()) == {IGNORE_INDEX}


def test_class_names_and_colours_follow_trainid_order():
    assert len(CLASS_NAMES) == 19
    assert CLASS_NAMES[0] == "road" and CLASS_NAMES[13] == "car" and CLASS_NAMES[18] == "bicycle"
    for t, name in enumerate(CLASS_NAMES):
        lid = int(TRAINID_TO_CITYSCAPES_ID[t])
        assert id2label[lid].name == name and id2label[lid].trainId == t
        assert tuple(TRAINID_COLORS[t]) == id2label[lid].color


def test_license_plate_is_ignored():
    # 'license plate' has trainId -1 in the official table; stored as 255 in uint8 label maps
    assert CITYSCAPES_ID_TO_TRAINID[255] == IGNORE_INDEX


def test_synthia_mapping_has_16_classes():
    assert len(SYNTHIA_16_CLASSES) == 16 and len(SYNTHIA_13_CLASSES) == 13
    assert {9, 14, 16}.isdisjoint(SYNTHIA_16_CLASSES)  # terrain, truck, train absent
    assert {3, 4, 5}.isdisjoint(SYNTHIA_13_CLASSES)
    raw = np.array([[3, 4, 2], [0, 22, 19]], dtype=np.uint16)
    np.testing.assert_array_equal(map_ids(raw, SYNTHIA_ID_TO_TRAINID),
                                  [[0, 1, 2], [255, 255, 15]])


def test_map_ids_out_of_range_values_become_ignore():
    raw = np.array([[-1, 7, 300]], dtype=np.int32)
    np.testing.assert_array_equal(map_ids(raw, CITYSCAPES_ID_TO_TRAINID), [[255, 0, 255]])
