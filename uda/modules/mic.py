"""MIC (Hoyer et al. CVPR 2023, lhoyer/MIC seg/mmseg/models/uda/masking_consistency_module.py
with mask_mode `separatetrgaug`, the teacher and threshold of the host: 'same'): the daformer
recipe plus masked image consistency.

Its extra target loss: each target image, strongly augmented (colour jitter, blur; when
`augment`) and masked by random blocks (uda.losses.masking: blocks of `block_size` pixels,
each dropped with probability `ratio`, masked pixels set to 0 = the mean colour), is trained
against the teacher's pseudo-labels of the unmasked image, with their pixel weights (confident
fraction, pseudo-label crop), at weight `mic_lambda`. The masks come from the iteration's
generator (seeded by batch["seed"]).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from uda.losses import segmentation_ce
from uda.losses.masking import mask_images
from uda.methods import MICConfig
from uda.modules.base import RecipeParts
from uda.modules.daformer import DAFormer, recipe_kwargs


class MIC(DAFormer):
    def __init__(self, segmenter: nn.Module, class_names: Sequence[str], block_size: int = 64,
                 ratio: float = 0.7, mic_lambda: float = 1.0, augment: bool = True, **kwargs):
        """`kwargs`: DAFormer's arguments."""
        super().__init__(segmenter, class_names, **kwargs)
        self.block_size, self.ratio = block_size, ratio
        self.mic_lambda, self.augment_masked = mic_lambda, augment

    @torch.no_grad()
    def masked_target(self, x_t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = self.augment(x_t, g) if self.augment_masked else x_t
        return mask_images(x, self.block_size, self.ratio, g)[0]

    def target_losses(self, batch, target: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
        masked = self.masked_target(batch["target"]["image"], g)
        return {"masked": self.mic_lambda * segmentation_ce(
            self.segmenter(masked), target["labels"], pixel_weight=target["weight"])}


def build(s: MICConfig, parts: RecipeParts) -> MIC:
    """The recipe of a `method.mic` settings section."""
    return MIC(parts.segmenter(), parts.class_names, block_size=s.mask_block_size,
               ratio=s.mask_ratio, mic_lambda=s.mic_lambda, augment=s.mic_augment,
               **recipe_kwargs(s), **parts.common)
