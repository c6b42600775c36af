"""Debiasing augmentations: sample mixing (Mixup, CutMix, ClassMix/DACS given pseudo-labels),
SelecMix pair selection, rare-class sampling, photometric strong augmentation.

Building blocks (mixing, selecmix, sampling, photometric): pure tensor functions seeded by a
`torch.Generator`; labels are class labels (B,) or masks (B,H,W) with 255 = ignore.
Training integration: `pipeline.DebiasPipeline` (batch mixers, incl. style-swap
counterfactuals, run on device by the datamodule). The losses (GCE, the mixed-label loss) and
LfF's statistics are model-side: uda.losses.lff, uda.losses.mixed. See each module's docstring
for the contracts.
"""
from datamodules.debias.mixing import class_mix_mask, classmix, cutmix, mixup, sample_beta
from datamodules.debias.sampling import (RareClassSampler, class_pixel_counts,
                                         rare_class_probabilities)
from datamodules.debias.selecmix import select_contradicting, selecmix

__all__ = ["class_mix_mask", "classmix", "cutmix", "mixup", "sample_beta", "RareClassSampler",
           "class_pixel_counts", "rare_class_probabilities", "select_contradicting", "selecmix"]
