"""MIC (Hoyer et al. CVPR 2023, lhoyer/MIC seg/mmseg/models/uda/masking_consistency_module.py
with mask_mode `separatetrgaug`, the teacher and threshold of the host: 'same'): the daformer
recipe (method.mic.host: daformer) or the hrda recipe (host: hrda, MIC's released configuration)
plus masked image consistency (`MaskedConsistency`, a mixin over the host).

Its extra target loss: each target image, strongly augmented (colour jitter, blur; when
`augment`) and masked by random blocks (uda.losses.masking: blocks of `block_size` pixels,
each dropped with probability `ratio`, masked pixels set to 0 = the mean colour), is trained
against the teacher's pseudo-labels of the unmasked image, with their pixel weights (confident
fraction, pseudo-label crop), at weight `mic_lambda`, through the host's `pseudo_ce` (on HRDA:
its multi-resolution loss with a random detail window). The masks come from the iteration's
generator (seeded by batch["seed"]).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from uda.losses.masking import mask_images
from uda.methods import MICConfig
from uda.modules.base import RecipeParts
from uda.modules.daformer import DAFormer, recipe_kwargs
from uda.modules.hrda import HRDA, hrda_segmenter


class MaskedConsistency:
    """MIC's masked-image loss over a self-training host (DAFormer or HRDA, listed after this
    mixin): `target_losses` with the host's `pseudo_ce` (HRDA's: the multi-resolution loss on a
    random detail window of the masked image, as the official MIC on HRDA)."""

    def __init__(self, segmenter: nn.Module, class_names: Sequence[str], block_size: int = 64,
                 ratio: float = 0.7, mic_lambda: float = 1.0, augment: bool = True, **kwargs):
        """`kwargs`: the host's arguments."""
        super().__init__(segmenter, class_names, **kwargs)
        self.block_size, self.ratio = block_size, ratio
        self.mic_lambda, self.augment_masked = mic_lambda, augment

    @torch.no_grad()
    def masked_target(self, x_t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = self.augment(x_t, g) if self.augment_masked else x_t
        return mask_images(x, self.block_size, self.ratio, g)[0]

    def target_losses(self, batch, target: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
        masked = self.masked_target(batch["target"]["image"], g)
        return {"masked": self.mic_lambda * self.pseudo_ce(masked, target["labels"],
                                                           target["weight"], g)}


class MIC(MaskedConsistency, DAFormer):
    """MIC on DAFormer (method.mic.host: daformer)."""


class MICOnHRDA(MaskedConsistency, HRDA):
    """MIC on HRDA (method.mic.host: hrda), the official MIC's main configuration."""


def build(s: MICConfig, parts: RecipeParts) -> MIC | MICOnHRDA:
    """The recipe of a `method.mic` settings section, on its host."""
    masking = dict(block_size=s.mask_block_size, ratio=s.mask_ratio, mic_lambda=s.mic_lambda,
                   augment=s.mic_augment, **recipe_kwargs(s), **parts.common)
    if s.host == "hrda":
        return MICOnHRDA(hrda_segmenter(s, parts), parts.class_names, lambda_lr=s.lambda_lr,
                         lambda_hr=s.lambda_hr, **masking)
    return MIC(parts.segmenter(), parts.class_names, **masking)
