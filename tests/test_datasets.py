import shutil

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label
from PIL import Image

from datamodules.datasets import CityscapesDataset, GTA5Dataset, SynthiaDataset
from datamodules.image_io import DatasetError, read_label, read_rgb
from datamodules.labels import IGNORE_INDEX


def official_trainids(label_ids: np.ndarray) -> np.ndarray:
    """Reference mapping straight from cityscapesscripts, pixel value by pixel value."""
    out = np.full(label_ids.shape, IGNORE_INDEX, np.uint8)
    for v in np.unique(label_ids):
        lbl = id2label.get(int(v))
        if lbl is not None and 0 <= lbl.trainId < 19:
            out[label_ids == v] = lbl.trainId
    return out


def test_real_gta5_palette_label_reads_indices_not_colours(real_samples, tmp_path):
    path = real_samples / "gta5" / "labels" / "00100370.png"
    with Image.open(path) as im:
        assert im.mode == "P"
    raw = read_label(path)
    assert raw.ndim == 2 and raw.shape == (256, 512)
    assert raw.max() <= 33  # Cityscapes label ids, not palette colours
    # cv2 would return the palette colours (3 channels): the reason to read with PIL
    assert cv2.imread(str(path)).ndim == 3
    # through the dataset class, in a GTA5 layout built in tmp_path (image at a different size:
    # some GTA5 labels differ in size from their image -> nearest resize to the image size)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    shutil.copy(path, tmp_path / "labels" / "00001.png")
    Image.fromarray(np.zeros((128, 256, 3), np.uint8)).save(tmp_path / "images" / "00001.png")
    ds = GTA5Dataset(tmp_path, "train")
    with pytest.warns(UserWarning, match=r"00001\.png: label size 512x256 differs from image size "
                      r"256x128; resized \(nearest\)"):
        image, mask = ds.load(0)
        item = ds[0]
    assert image.shape == (128, 256, 3) and mask.shape == (128, 256)
    # nearest 2x downscale samples pixel centres: source pixel (2i+1, 2j+1)
    np.testing.assert_array_equal(mask, official_trainids(raw)[1::2, 1::2])
    assert item["name"] == "00001" and item["mask"].dtype.__str__() == "torch.int64"


def test_real_cityscapes_train_labels_map_through_official_table(real_samples):
    ds = CityscapesDataset(real_samples / "cityscapes", "train")
    assert [s.name for s in ds.samples] == ["aachen_000000_000019", "aachen_000001_000019"]
    for i, s in enumerate(ds.samples):
        image, mask = ds.load(i)
        assert image.shape == (1024, 2048, 3)
        np.testing.assert_array_equal(mask, official_trainids(read_label(s.label)))


def test_cityscapes_unlabelled_mode_reads_no_label(real_samples):
    ds = CityscapesDataset(real_samples / "cityscapes", "train", labelled=False)
    item = ds[0]
    assert "mask" not in item and item["image"].shape == (3, 1024, 2048)


def test_cityscapes_prefers_labeltrainids(real_samples, tmp_path):
    src = real_samples / "cityscapes_small"
    root = tmp_path / "cs"
    shutil.copytree(src, root)
    ds = CityscapesDataset(root, "val")
    s = ds.samples[0]
    assert s.label.name.endswith("_labelTrainIds.png")
    _, mask = ds.load(0)
    np.testing.assert_array_equal(mask, read_label(s.label))
    # without the trainIds file, labelIds are mapped (77 pixels differ on this resized frame)
    s.label.unlink()
    ds2 = CityscapesDataset(root, "val")
    assert ds2.samples[0].label.name.endswith("_labelIds.png")
    _, mask2 = ds2.load(0)
    assert 0 < (mask2 != mask).sum() < 200


def test_palette_mode_cityscapes_frame_is_converted_to_rgb(real_samples, tmp_path):
    pal = real_samples / "demo" / "cityscapes_palette_1024x512.png"
    with Image.open(pal) as im:
        assert im.mode == "P"
        expected = np.asarray(im.convert("RGB"))
        indices = np.asarray(im)
        palette = np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)
    rgb = read_rgb(pal)
    assert rgb.shape == (512, 1024, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, expected)
    np.testing.assert_array_equal(rgb, palette[indices])
    # and through the Cityscapes dataset class (unlabelled target mode)
    city = tmp_path / "leftImg8bit" / "train" / "demo"
    city.mkdir(parents=True)
    shutil.copy(pal, city / "demo_000000_000000_leftImg8bit.png")
    item = CityscapesDataset(tmp_path, "train", labelled=False)[0]
    assert item["image"].shape == (3, 512, 1024)


def test_synthia_16bit_labels_first_channel(tmp_path):
    (tmp_path / "RGB").mkdir()
    (tmp_path / "GT" / "LABELS").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "RGB" / "0000001.png")
    cls = np.array([[3, 4, 2, 21, 5, 7, 15, 9, 6, 1]] * 8, np.uint16)
    inst = np.full_like(cls, 777)  # instance ids in the other channel must be ignored
    rgb16 = np.stack([cls, inst, np.zeros_like(cls)], -1)
    cv2.imwrite(str(tmp_path / "GT" / "LABELS" / "0000001.png"), rgb16[:, :, ::-1])  # cv2: BGR
    ds = SynthiaDataset(tmp_path)
    _, mask = ds.load(0)
    np.testing.assert_array_equal(mask[0], [0, 1, 2, 3, 4, 5, 6, 7, 8, 10])


def test_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="root directory not found"):
        GTA5Dataset(tmp_path / "nope")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="no gta5 images"):
        GTA5Dataset(tmp_path)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "00001.png")
    with pytest.raises(DatasetError, match="have no label file"):
        GTA5Dataset(tmp_path)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = GTA5Dataset(tmp_path)
    with pytest.raises(DatasetError, match="00001.png: cannot decode label"):
        ds.load(0)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "labels" / "00001.png")
    with pytest.raises(DatasetError, match="colour visualisation"):
        GTA5Dataset(tmp_path).load(0)
    (tmp_path / "list.txt").write_text("00001\n00002\n")
    with pytest.raises(DatasetError, match="list.txt: 1 listed name"):
        GTA5Dataset(tmp_path, list_file=tmp_path / "list.txt")


def _gta_one(root, label: np.ndarray):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros(label.shape + (3,), np.uint8)).save(root / "images" / "00001.png")
    Image.fromarray(label).save(root / "labels" / "00001.png")
    return GTA5Dataset(root)


def _cityscapes_one(root, label: np.ndarray, kind: str):
    img = root / "leftImg8bit" / "val" / "c" / "c_000000_000000_leftImg8bit.png"
    gt = root / "gtFine" / "val" / "c" / f"c_000000_000000_gtFine_{kind}.png"
    for p in (img, gt):
        p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros(label.shape + (3,), np.uint8)).save(img)
    Image.fromarray(label).save(gt)
    return CityscapesDataset(root, "val"), gt


@pytest.mark.parametrize("kind,bad,good", [("labelIds", 200, 33), ("labelTrainIds", 19, 18)])
def test_cityscapes_label_values_are_checked_when_loading(tmp_path, kind, bad, good):
    """As `uda data check`: a value that is no id of the label kind fails, naming file and value."""
    label = np.full((4, 6), good, np.uint8)
    label[0, 0] = 255                                   # valid in both kinds
    ds, gt = _cityscapes_one(tmp_path / "ok", label, kind)
    assert ds.load(0)[1].shape == (4, 6)
    label[1, 1] = bad
    ds, gt = _cityscapes_one(tmp_path / "bad", label, kind)
    with pytest.raises(DatasetError, match=rf"{gt.name}: unexpected label value\(s\) \[{bad}\] for "
                       rf"cityscapes {kind}"):
        ds[0]


def test_gta5_palette_ids_are_checked_when_loading(tmp_path):
    label = np.full((4, 6), 7, np.uint8)
    label[2, 3] = 40                                    # no Cityscapes label id
    ds = _gta_one(tmp_path, label)
    with pytest.raises(DatasetError, match=r"00001\.png: unexpected label value\(s\) \[40\] for gta5 "
                       r"label ids \(valid: 0-33, 255\)"):
        ds.load(0)


def test_unknown_ids_and_describe_ids():
    from datamodules.labels import describe_ids, unknown_ids
    label = np.array([[0, 5, 200], [255, 34, 5]], np.uint8)
    assert unknown_ids(label, range(34)) == [34, 200, 255]
    assert unknown_ids(np.array([[0, 1000], [7, 0]], np.uint16), [0, 7]) == [1000]
    assert unknown_ids(np.array([[-1, 3]], np.int32), [3]) == [-1]
    assert describe_ids((0, 1, 2, 3, 255)) == "0-3, 255" and describe_ids([4, 7, 8]) == "4, 7-8"
