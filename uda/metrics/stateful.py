"""Thin torchmetrics wrapper: accumulates the confusion matrix, summed across DDP ranks."""
from __future__ import annotations

import torch
from torchmetrics import Metric

from uda.metrics.confusion import confusion_matrix


class ConfusionMatrixMetric(Metric):
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255):
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("cm", default=torch.zeros(num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")
        self.add_state("num_images", default=torch.tensor(0, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: (B,H,W) integer maps of equal shape."""
        # Fresh tensors (not in-place): under ddp_spawn the default state may be shared memory.
        self.cm = self.cm + confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.num_images = self.num_images + pred.shape[0]

    def compute(self) -> tuple[torch.Tensor, int]:
        """(summed confusion matrix, number of images) over all ranks. Read them from here:
        after `compute` torchmetrics restores the rank-local states."""
        return self.cm.clone(), int(self.num_images)
