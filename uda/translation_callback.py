"""`TranslationQuality`: translation quality of a DRANet run, logged at each validation.

On a fixed small set (`num_images` source-train and target-val images of the datamodule and
`num_styles` target-train images as the style bank, each evenly spaced over its split; read
without augmentation, downscaled so that the longer side is at most `max_side`) it logs

  val_translation/style_fd_source_target      Fréchet distance of the style descriptors
  val_translation/style_fd_translated_target  (uda.metrics.style_distance), and
  val_translation/style_gap_closed            1 - translated/source distance to target val;
  val_translation/{colour,texture}_*          the same on the colour and texture parts;

and, with `eval.translation_reference` (a reference segmentation checkpoint trained on labelled
target images), the FCN-score:

  val_translation/fcn_score                   reference mIoU on translated source frames,
  val_translation/reference_miou_source       ... on the untranslated source frames,
  val_translation/reference_miou_target_val   ... on the target val images,
  val_translation/fcn_score_pct_of_target     fcn_score as % of the target-val mIoU.

Everything is computed on rank 0 only, with no collective operation (other ranks do nothing), the
translator in eval mode under torch.no_grad() and its mode restored afterwards. The untranslated
sets' descriptors and reference predictions are computed once and cached; each validation then
costs the translation of `num_images` frames plus their descriptors and reference predictions.
Numbers are diagnostics (a small fixed set, biased upwards Fréchet distances: compare runs
scored with the same sizes), never used for model selection.
"""
from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from uda.methods import method
from uda.metrics.style_distance import style_distances
from uda.models.modes import eval_mode


def _fit(image: np.ndarray, mask: np.ndarray | None, max_side: int):
    """Downscale an HxWx3 uint8 image (area) and its mask (nearest) to a longer side <= max_side."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, mask
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))  # cv2: (width, height)
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if mask is not None:
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST_EXACT)
    return image, mask


class TranslationQuality(pl.Callback):
    def __init__(self, num_images: int = 16, num_styles: int = 16, reference: str | None = None,
                 max_side: int = 512, prefix: str = "val_translation"):
        self.num_images, self.num_styles = num_images, num_styles
        self.reference_path, self.max_side, self.prefix = reference, max_side, prefix
        self._ready = False
        self.last_metrics: dict[str, float] = {}
        self.seconds: list[float] = []  # time of each evaluation (rank 0), for the record

    # --- the fixed set, prepared once ---------------------------------------------------------
    def _images(self, dataset, n: int, labelled: bool):
        from uda.translation_quality import evenly_spaced
        out = []
        for i in evenly_spaced(len(dataset), n):
            image, mask = dataset.load(i)
            out.append(_fit(image, mask if labelled else None, self.max_side))
        return out

    def _prepare(self, trainer, pl_module) -> bool:
        from uda.translation_quality import ImageSet, load_reference, style_net, unit_image
        dm = trainer.datamodule
        datasets = [getattr(dm, k, None) for k in ("source_train", "target_train", "target_val")]
        if any(ds is None or not hasattr(ds, "load") for ds in datasets):
            rank_zero_warn("TranslationQuality: the datamodule has no source-train, target-train "
                           "and target-val datasets; translation quality is not logged")
            return False
        source_ds, target_ds, val_ds = datasets
        device = pl_module.device
        self.net = style_net(device)
        self.reference = (load_reference(self.reference_path, device)
                          if self.reference_path else None)
        n_cls = self.reference.num_classes if self.reference else None
        self.source = self._images(source_ds, self.num_images, labelled=True)
        self.bank_u = [unit_image(img, device) for img, _ in
                       self._images(target_ds, self.num_styles, labelled=False)]
        self.sets = {"source": ImageSet(n_cls), "target_val": ImageSet(n_cls)}
        for image, mask in self.source:
            self.sets["source"].add(image, mask, self.net, self.reference, device)
        for image, mask in self._images(val_ds, self.num_images, labelled=True):
            self.sets["target_val"].add(image, mask, self.net, self.reference, device)
        self.source_u = [unit_image(img, device) for img, _ in self.source]
        self._ready = True
        return True

    # --- each validation ------------------------------------------------------------------------
    @torch.no_grad()
    def _translated(self, pl_module):
        from uda.translate import to_uint8, translate_unit
        tr = pl_module.translator
        dtype = next(tr.parameters()).dtype  # bf16-true / 64-true runs
        # bank frames may differ in size: encode one by one; the CADT attention pools contents
        # globally, so pooled contents select styles exactly as full maps would
        codes = [tr.encode(u.to(dtype), "target") for u in self.bank_u]
        bank = (torch.cat([c.mean(dim=(2, 3), keepdim=True) for c, _ in codes]),
                torch.cat([s for _, s in codes]))
        return [to_uint8(((translate_unit(pl_module, u.to(dtype), bank).float() + 1) / 2)
                         .clamp(0, 1)[0]) for u in self.source_u]

    def evaluate(self, trainer, pl_module) -> dict[str, float]:
        """The metrics (also logged by the hook); rank 0's work, no collectives."""
        from uda.translation_quality import ImageSet, fcn_scores
        if not self._ready and not self._prepare(trainer, pl_module):
            return {}
        with eval_mode(pl_module.translator):
            translated = self._translated(pl_module)
        n_cls = self.reference.num_classes if self.reference else None
        tset = ImageSet(n_cls)
        for image, (_, mask) in zip(translated, self.source):
            tset.add(image, mask, self.net, self.reference, pl_module.device)
        src, tgt = self.sets["source"], self.sets["target_val"]
        metrics = style_distances(src.stacked(), tset.stacked(), tgt.stacked())
        if self.reference is not None:
            ref = self.reference
            metrics.update(fcn_scores(ref.results(tgt.cm, tgt.count),
                                      ref.results(src.cm, src.count),
                                      ref.results(tset.cm, tset.count)))
        return {k: float(v) for k, v in metrics.items()
                if v is not None and not math.isnan(float(v))}

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        start = time.perf_counter()
        self.last_metrics = self.evaluate(trainer, pl_module)
        for k, v in self.last_metrics.items():
            pl_module.log(f"{self.prefix}/{k}", v, sync_dist=False, rank_zero_only=True)
        self.seconds.append(time.perf_counter() - start)


def for_config(cfg) -> list:
    """The run's translation-quality callback: [TranslationQuality] for a run whose method
    trains a translator (DRANet) with eval.translation_images > 0, else []."""
    if not method(cfg.method.name).translator or cfg.eval.translation_images <= 0:
        return []
    return [TranslationQuality(cfg.eval.translation_images,
                               reference=cfg.eval.translation_reference)]
