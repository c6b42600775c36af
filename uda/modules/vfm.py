"""VFM-UDA++ (Englert & Dubbelman, ICCVW 2025; tue-mps/vfm-uda-plusplus training/uda/uda.py) on
a DINOv2 segmenter (model.name=dinov2: uda.models.vit): the mic recipe (self-training with an
EMA teacher, ClassMix, strong augmentation, masked target consistency) with VFM-UDA++'s feature
distance instead of DAFormer's and masks aligned to the ViT's patches.

One training iteration (labelled source x_s, y_s; unlabelled target x_t):
  pseudo-label  the EMA teacher labels x_t; every target pixel weighs the batch-wide fraction of
                pixels with confidence >= `threshold` (no pseudo-label crop);
  mix           ClassMix of source classes onto x_t (pasted pixels weigh 1), strongly augmented
                (colour jitter strength 0.2 with probability 0.8, blur with probability 1/2);
  task step     CE on x_s
                + fd_source x the feature distance on x_s
                + `weight` x the weighted CE on the mixed images
                + mic_lambda x the weighted CE of the masked target (below), pseudo-labelled
                + fd_target x the feature distance on x_t;
  teacher       EMA update after the step.

Feature distance (uda.losses.vfm_feature_distance): the student's last-block tokens after the
final LayerNorm (feats["enc"], stride 14), projected by a trained per-cell MLP
(uda.models.feature_projector, at the heads' 10x learning rate), against the same tokens of a
frozen copy of the segmenter at its initial weights, i.e. the pretrained DINOv2 encoder
(uda.models.frozen_copy); every cell of every image counts, per cell 0.1 x mean smooth-L1 +
0.9 x (1 - cosine). The source term reuses the features of the source CE forward; the target term
is one more student forward on x_t. Both models see the same, unaugmented image.

Masking (uda.losses.masking.patch_block_mask): the target images, strongly augmented when
`augment`, are masked by cells of `block_size` pixels (a multiple of the 14-pixel patch) from the
top-left corner, each dropped with probability `ratio`; masked pixels become 0, the dataset mean.
A wholly zero patch embeds to the patch embedding's bias, the same vector wherever it is: this is
token masking (each masked patch token replaced by one shared token, before the position
embedding is added, as VFM-UDA's TokenMasking), whose mask token is that bias instead of
DINOv2's iBOT mask token (which timm's networks do not have). block_size 14 masks tokens
independently (VFM-UDA); VFM-UDA++'s released code masks 64-pixel image blocks of its 1120-pixel
network input (MIC's masking), about 4.6 patches: the default 56 (4 patches).
All randomness comes from one generator seeded by batch["seed"].
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from uda.losses.masking import patch_block_mask
from uda.losses.vfm_feature_distance import vfm_feature_distance
from uda.methods import VFMConfig
from uda.models.feature_projector import FeatureProjector
from uda.modules.base import RecipeParts
from uda.modules.mic import MIC


class VFM(MIC):
    def __init__(self, segmenter: nn.Module, class_names: Sequence[str], fd_source: float = 0.1,
                 fd_target: float = 0.1, **kwargs):
        """`segmenter`: a ViT segmenter (its `embed_dim`, features "enc" on the patch grid);
        `kwargs`: MIC's (block_size: pixels, a multiple of the patch size; ratio, mic_lambda,
        augment) and SelfTraining's / SegmentationModule's arguments."""
        patch = getattr(segmenter, "patch_size", None)
        if patch is None or not hasattr(segmenter, "embed_dim"):
            raise ValueError(f"the vfm recipe needs a ViT segmenter (model.name=dinov2), got "
                             f"{type(segmenter).__name__}")
        block = kwargs.get("block_size", 64)
        if block % patch:
            raise ValueError(f"block_size={block} is not a multiple of the patch size {patch}")
        # DAFormer's frozen copy is taken (at the pretrained weights) when fd_lambda > 0; the
        # weights of the two distances are fd_source / fd_target
        super().__init__(segmenter, class_names, fd_lambda=float(fd_source > 0 or fd_target > 0),
                         **kwargs)
        self.fd_source, self.fd_target = fd_source, fd_target
        dim = segmenter.embed_dim
        self.projector = FeatureProjector(dim, dim) if self.frozen is not None else None

    def recipe_param_groups(self, lr: float) -> list[dict]:
        """The projector at the heads' 10x learning rate (VFM-UDA++: the decoder's)."""
        if self.projector is None:
            return []
        return [{"name": "fd_projector", "lr": 10 * lr, "lr_mult": 10.0,
                 "params": list(self.projector.parameters())}]

    def distance_to_frozen(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The (unweighted) feature distance of the student's encoder features of `images` to
        the frozen foundation model's."""
        return vfm_feature_distance(self.projector(features), self.frozen(images)["enc"])

    def feature_distance(self, src: dict, features: torch.Tensor) -> torch.Tensor:
        """fd_source x the feature distance on the source images."""
        if not self.fd_source:
            return features.new_zeros(())
        return self.fd_source * self.distance_to_frozen(src["image"], features)

    @torch.no_grad()
    def masked_target(self, x_t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = self.augment(x_t, g) if self.augment_masked else x_t
        mask = patch_block_mask(x.shape[0], tuple(x.shape[-2:]), self.block_size, self.ratio,
                                g, x.device)
        return x * mask.to(x.dtype)

    def target_losses(self, batch, target: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
        """MIC's masked-target loss and fd_target x the feature distance on the target images."""
        losses = super().target_losses(batch, target, g)
        if self.projector is not None and self.fd_target:
            x_t = batch["target"]["image"]
            features = self.segmenter(x_t, return_features=True)[1]["enc"]
            losses["fd_target"] = self.fd_target * self.distance_to_frozen(x_t, features)
        return losses


def build(s: VFMConfig, parts: RecipeParts) -> VFM:
    """The recipe of a `method.vfm` settings section."""
    strong = (dict(jitter_p=s.jitter_p, strength=s.jitter_strength, blur_p=s.blur_p)
              if s.strong_aug else None)
    return VFM(parts.segmenter(), parts.class_names, fd_source=s.fd_source,
               fd_target=s.fd_target, block_size=s.mask_block_size, ratio=s.mask_ratio,
               mic_lambda=s.mic_lambda, augment=s.mic_augment, threshold=s.threshold, ema=s.ema,
               weight=s.weight, per_image=s.pseudo_weight == "image", strong_aug=strong,
               **parts.common)
