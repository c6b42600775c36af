"""Shared behaviour of segmenters built as `self.backbone` + new heads (DeepLabV2, DRN-C-26)."""
from __future__ import annotations

from torch import nn


class BackboneSegmenter(nn.Module):
    """Subclasses set `self.backbone` and implement `heads()` (the newly initialised modules).

    freeze_bn(): backbone BatchNorms in eval mode with frozen affine parameters (batch 2 per GPU
    would make their statistics noise); survives later `.train()` calls, as Lightning makes.
    param_groups(lr): trainable backbone parameters at lr, heads at 10 * lr (the DeepLab UDA
    convention); groups carry `name` and `lr_mult`.
    """

    _bn_frozen = False

    def heads(self) -> list[nn.Module]:
        raise NotImplementedError

    def _backbone_bns(self):
        return (m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))

    def freeze_bn(self) -> None:
        self._bn_frozen = True
        for m in self._backbone_bns():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self._bn_frozen:
            for m in self._backbone_bns():
                m.eval()
        return self

    def param_groups(self, lr: float) -> list[dict]:
        return [
            {"name": "backbone", "lr": lr, "lr_mult": 1.0,
             "params": [p for p in self.backbone.parameters() if p.requires_grad]},
            {"name": "heads", "lr": 10 * lr, "lr_mult": 10.0,
             "params": [p for h in self.heads() for p in h.parameters() if p.requires_grad]},
        ]
