"""Debiasing augmentations: sample mixing (Mixup, CutMix, ClassMix/DACS given pseudo-labels),
Learning-from-Failure weights, SelecMix pair selection, rare-class sampling.

Building blocks (mixing, lff, selecmix, sampling): pure tensor functions seeded by a
`torch.Generator`; labels are class labels (B,) or masks (B,H,W) with 255 = ignore.
Training integration: `pipeline.DebiasPipeline` (batch mixers, incl. style-swap
counterfactuals, run on device by the datamodule) and `callback.DebiasCallback` (LfF
statistics). See each module's docstring for the contracts.
"""
from datamodules.debias.lff import LfFWeights, gce_loss
from datamodules.debias.mixing import (class_mix_mask, classmix, cutmix, mixed_loss, mixup,
                                       sample_beta)
from datamodules.debias.sampling import (RareClassSampler, class_pixel_counts,
                                         rare_class_probabilities)
from datamodules.debias.selecmix import select_contradicting, selecmix

__all__ = ["LfFWeights", "gce_loss", "class_mix_mask", "classmix", "cutmix", "mixed_loss",
           "mixup", "sample_beta", "RareClassSampler",
           "class_pixel_counts", "rare_class_probabilities", "select_contradicting", "selecmix"]
