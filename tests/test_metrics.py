import math

import pytest
import torch

from uda.metrics import (confusion_matrix, frequency_weighted_iou, iou_per_class, mean_iou,
                         pixel_accuracy)
from uda.metrics.results import format_table, results_dict
from uda.metrics.stateful import ConfusionMatrixMetric


def test_confusion_matrix_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [1, 2, 0], [1, 0, 1]]  # rows = ground truth
    # IoU_c = TP / (TP + FP + FN): class 0: 1/(1+2+1), class 1: 2/(2+1+1), class 2: 1/(1+0+1)
    iou = iou_per_class(cm)
    assert iou.tolist() == pytest.approx([1 / 4, 2 / 4, 1 / 2])
    assert mean_iou(cm) == pytest.approx((1 / 4 + 2 / 4 + 1 / 2) / 3)
    assert pixel_accuracy(cm) == pytest.approx(4 / 7)
    assert frequency_weighted_iou(cm) == pytest.approx((2 * 1 / 4 + 3 * 2 / 4 + 2 * 1 / 2) / 7)


def test_absent_class_is_nan_and_excluded_from_mean():
    cm = confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 4)
    iou = iou_per_class(cm)
    assert iou[:2].tolist() == [1.0, 1.0] and math.isnan(iou[2]) and math.isnan(iou[3])
    assert mean_iou(cm) == 1.0
    # a class only predicted (never in GT) counts with IoU 0
    cm = confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 4)
    assert mean_iou(cm) == pytest.approx((1 + 0 + 0) / 3)
    assert mean_iou(cm, classes=[0]) == 1.0


def test_dataset_level_not_per_image_average():
    # image A: a small correct class-1 region; image B: class 1 entirely missed (large)
    ta, pa = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 1])
    tb, pb = torch.tensor([1] * 8), torch.tensor([0] * 8)
    cm = confusion_matrix(pa, ta, 2) + confusion_matrix(pb, tb, 2)
    assert iou_per_class(cm)[1] == pytest.approx(1 / 9)


def test_prediction_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="predictions must lie"):
        confusion_matrix(torch.tensor([5]), torch.tensor([0]), 3)


def test_stateful_metric_accumulates_and_reports():
    m = ConfusionMatrixMetric(3)
    m.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    m.update(torch.tensor([[2, 2]]), torch.tensor([[2, 255]]))
    cm, n = m.compute()
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]] and n == 2
    r = results_dict(cm, n, ["a", "b", "c"])
    assert r["mIoU"] == 100.0 and r["num_images"] == 2 and r["confusion_matrix"][2][2] == 1
    r = results_dict(torch.tensor([[1, 0], [0, 0]]), 1, ["a", "b"], {"mIoU1": [0]})
    assert r["per_class_iou"] == {"a": 100.0, "b": None} and r["mIoU1"] == 100.0
    assert "n/a" in format_table(r)
