"""Self-training with an EMA teacher (DACS, Tranheden et al. WACV 2021; the core that DAFormer,
HRDA and MIC build on), as a Lightning module with one optimizer.

One training iteration (labelled source x_s, y_s; unlabelled target x_t):
  pseudo-label  the EMA teacher labels x_t (argmax); its confidence weight is the fraction of
                pixels whose top probability is >= `threshold`, per image (`per_image`) or over
                the batch (the official DACS / DAFormer code);
  mix           cross-domain ClassMix: half the classes of each source image (image and labels)
                pasted onto a target image; pasted pixels weigh 1, the others the confidence;
                then DACS's strong augmentation of the mixed images (colour jitter, blur);
  task step     CE on the source + `weight` x the confidence-weighted CE on the mixed images;
  teacher       after the step, teacher <- a teacher + (1 - a) student, a = min(1 - 1/(it+1), ema).
The mixing is seeded by the batch's "seed" (reproducible, resumable, different on each rank).
Validation also scores the teacher (val_teacher/mIoU): the mechanism, not only the student.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from datamodules.debias.mixing import classmix
from datamodules.debias.photometric import strong_transform
from uda.evaluation.inference import predict_labels
from uda.losses import segmentation_ce
from uda.losses.pseudo_label import pseudo_label
from uda.methods import SelfTrainingConfig
from uda.metrics.results import results_dict
from uda.metrics.stateful import ConfusionMatrixMetric
from uda.models.ema_teacher import EMATeacher
from uda.modules.base import RecipeParts, SegmentationModule


class SelfTraining(SegmentationModule):
    def __init__(self, segmenter: nn.Module, class_names: Sequence[str], threshold: float = 0.968,
                 ema: float = 0.99, weight: float = 1.0, per_image: bool = True,
                 strong_aug: dict | None = None, **common):
        """strong_aug: keyword arguments of datamodules.debias.photometric.strong_transform
        (None: off); `common`: SegmentationModule's arguments (max_steps, optim, ...)."""
        super().__init__(segmenter, class_names, **common)
        self.strong_aug = strong_aug
        self.teacher = EMATeacher(segmenter, ema)
        self.threshold, self.weight, self.per_image = threshold, weight, per_image
        self.teacher_metric = ConfusionMatrixMetric(len(self.class_names))

    def configure_optimizers(self):
        opt, sched = self.task_optimizer()
        return [opt], [sched]

    def generator(self, batch) -> torch.Generator:
        """The iteration's generator of the recipe's own randomness, seeded by the batch's
        seed (on the images' device when CUDA, else the CPU)."""
        dev = batch["target"]["image"].device
        return torch.Generator(device=dev if dev.type == "cuda" else "cpu").manual_seed(
            batch["seed"])

    @torch.no_grad()
    def augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The strong augmentation of dataset-normalised images (applied in [0, 1] RGB); x
        unchanged when it is off."""
        if self.strong_aug is None:
            return x
        u = strong_transform(self.to_display(x), g, **self.strong_aug)
        return self.from_display(u).to(x.dtype)

    @torch.no_grad()
    def mixed_batch(self, batch) -> dict[str, torch.Tensor]:
        """Source classes pasted onto the pseudo-labelled target: image, mask, pixel weight."""
        src, x_t = batch["source"], batch["target"]["image"]
        labels, confidence = pseudo_label(self.teacher(x_t, self.segmenter), self.threshold,
                                          per_image=self.per_image)
        g = self.generator(batch)
        x, y, w = classmix(src["image"], src["mask"], x_t, labels, g, weight_tgt=confidence)
        return {"image": self.augment(x, g), "mask": y, "weight": w, "confidence": confidence}

    def training_step(self, batch, batch_idx):
        opt, sched = self.optimizers(), self.lr_schedulers()
        mixed = self.mixed_batch(batch)
        loss_seg = self.source_loss(self.segmenter(batch["source"]["image"]), batch["source"])
        loss_mixed = self.weight * segmentation_ce(self.segmenter(mixed["image"]), mixed["mask"],
                                                   pixel_weight=mixed["weight"])
        stepped, terms = self.task_step(opt, {"seg": loss_seg, "mixed": loss_mixed}, batch)
        # the teacher moves after every iteration, a skipped (non-finite) one too; here rather
        # than in a hook, so that callbacks (checkpoints) see the iteration's teacher
        self.teacher.update(self.segmenter, self.iteration)
        if not stepped:
            return
        sched.step()
        self.log("train/loss_seg", loss_seg.detach(), prog_bar=True)
        self.log("train/loss_mixed", loss_mixed.detach())
        self.log("train/pseudo_confident", mixed["confidence"].mean())
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()
                       if k not in ("seg", "mixed")})
        self.log("train/lr", sched.get_last_lr()[0])

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        pred = predict_labels(self.teacher.net, batch["image"], tuple(batch["mask"].shape[-2:]),
                              num_classes=len(self.class_names), **self.eval_options)
        self.teacher_metric.update(pred, batch["mask"])

    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        cm, num_images = self.teacher_metric.compute()
        self.teacher_metric.reset()
        miou = results_dict(cm, num_images, self.class_names, {})["mIoU"]
        self.log("val_teacher/mIoU", miou if miou is not None else 0.0, sync_dist=False,
                 rank_zero_only=True)


def build(s: SelfTrainingConfig, parts: RecipeParts) -> SelfTraining:
    """The recipe of a `method.self_training` settings section."""
    strong = (dict(jitter_p=s.jitter_p, strength=s.jitter_strength, blur_p=s.blur_p)
              if s.strong_aug else None)
    return SelfTraining(parts.segmenter(), parts.class_names, threshold=s.threshold, ema=s.ema,
                        weight=s.weight, per_image=s.pseudo_weight == "image",
                        strong_aug=strong, **parts.common)
