"""Segmentation metrics: pure functions over a summed confusion matrix."""
from uda.metrics.confusion import (confusion_matrix, frequency_weighted_iou, iou_per_class,
                                   mean_iou, pixel_accuracy)

__all__ = ["confusion_matrix", "iou_per_class", "mean_iou", "pixel_accuracy",
           "frequency_weighted_iou"]
