"""The projection of a student's features onto a frozen foundation model's feature space
(VFM-UDA++'s distillation head, tue-mps/vfm-uda-plusplus models/distill_feature_head): a per-cell
MLP, 1x1 convolution to 4x the input width, LayerNorm over channels, GELU, 1x1 convolution to
the frozen model's width. Trained with the segmenter (at the heads' learning rate), used only by
the feature distance: not part of the segmenter, not in its EMA teacher.
"""
from __future__ import annotations

import torch
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each cell of a (B, C, h, w) map (timm's LayerNorm2d; timm
    itself is imported only by the DINOv2 modules; its eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FeatureProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, expansion: int = 4):
        super().__init__()
        hidden = in_dim * expansion
        self.mlp = nn.Sequential(nn.Conv2d(in_dim, hidden, 1), LayerNorm2d(hidden), nn.GELU(),
                                 nn.Conv2d(hidden, out_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim, h, w) -> (B, out_dim, h, w)."""
        return self.mlp(x)
