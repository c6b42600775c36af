"""Debiasing inside the training recipes (data.debias; the augmentations themselves are in
`datamodules.debias`).

The module owns the model-in-the-loop parts: a GCE-trained biased network (LfF, SelecMix) and
a style codec (style swap: DRANet's own translator, or a frozen one
from a DRANet checkpoint). At fit start it registers them as callables with the datamodule's
`DebiasPipeline`, which augments each training batch after transfer. Recipes compute their
source loss with `source_loss` (blended label pairs, LfF pixel weights) and add
`debias_losses` (the biased network's GCE) to their task step; both are plain values without
data.debias. The LfF statistics (`uda.losses.lff.LfFWeights`) are the recipe's too: previewed
for the weights in `source_loss`, updated and merged over ranks after the task step
(`lff_update`, called by task_step), saved in the checkpoint under "lff". Mixed into
`SegmentationModule` (which sets biased, lff_stats, debias_settings, _codec in its __init__).
Self-training's EMA teacher is not debiasing: see uda.models.ema_teacher and the self_training
recipe.
"""
from __future__ import annotations

import torch
from torch import nn

from uda.losses.lff import LfFWeights, gce_loss
from uda.losses.mixed import mixed_loss
from uda.losses.segmentation import pixel_ce, valid_mean
from uda.models.modes import eval_mode


class DebiasMixin:
    def attach_debias(self, biased: nn.Module | None = None, gce_q: float = 0.7,
                      w_biased: float = 1.0, lff_ema: float | None = None) -> None:
        """biased: a fresh network trained with GCE(q) at weight w_biased (LfF, SelecMix);
        lff_ema: weight the source CE by LfF with statistics of EMA decay lff_ema (None: off;
        the statistics are sized by `setup_lff` when a fit starts)."""
        self.biased = biased
        self.lff_ema = lff_ema
        self.debias_settings = dict(gce_q=gce_q, w_biased=w_biased, lff=lff_ema is not None)

    def setup_lff(self, num_samples: int) -> None:
        """LfF statistics for a labelled training set of `num_samples` images (kept when they
        already have that size)."""
        if getattr(self, "lff_ema", None) is None:
            return
        if self.lff_stats is None or self.lff_stats.num_samples != num_samples:
            self.lff_stats = LfFWeights(num_samples, len(self.class_names), self.lff_ema)

    def set_style_codec(self, translator: nn.Module) -> None:
        """A DRANet translator used (frozen) as the style-swap codec; not saved with the module."""
        translator.requires_grad_(False).eval()
        object.__setattr__(self, "_codec", translator)  # bypass nn.Module: not a submodule

    def style_codec(self, x: torch.Tensor, x_style: torch.Tensor, alpha: torch.Tensor,
                    donor: str) -> torch.Tensor:
        """Dataset-normalised x with its DRANet content kept and its style code moved to
        alpha * style(x_style) + (1 - alpha) * style(x); x_style from domain `donor`."""
        tr = self.codec_translator()
        h, w = x.shape[-2:]
        # eval mode, no gradients: the codec is a fixed function here. DRANet's own translator
        # is in training mode, and a train-mode BatchNorm would move its running statistics
        # and, with sync_batchnorm, run a collective on the ranks whose batch had a picked
        # image only (the others wait forever).
        with eval_mode(tr), torch.no_grad():
            u = tr.pad(self.to_unit(x.float()))
            content, own = tr.encode(u, "source")
            _, other = tr.encode(tr.pad(self.to_unit(x_style.float())), donor)
            a = alpha.to(own.dtype).view(-1, 1, 1, 1)
            out = tr.decode(content, a * other + (1 - a) * own, u, own, ("source", donor),
                            alpha)[..., :h, :w]
        return self.from_unit(out.clamp(-1, 1))

    #: the recipe trains its own style codec (DRANet overrides codec_translator and sets this)
    trains_style_codec = False

    def codec_translator(self) -> nn.Module:
        if self._codec is None:
            raise RuntimeError("style swap needs a DRANet codec (set_style_codec)")
        return self._codec

    def debias_hooks(self) -> dict:
        """The callables offered to the datamodule's debias pipeline."""
        hooks = {}
        if self.biased is not None:
            hooks["bias_features"] = lambda x: self.biased(x, return_features=True)[1]["enc"].mean((2, 3))
        if self._codec is not None or self.trains_style_codec:
            hooks["style_codec"] = self.style_codec
        return hooks

    def _debias(self):
        dm = self._trainer.datamodule if self._trainer is not None else None
        return getattr(dm, "debias", None)

    def on_fit_start(self) -> None:
        if getattr(self, "lff_stats", None) is not None:
            self.lff_stats.to(self.device)
        pipeline = self._debias()
        if pipeline is None:
            return
        if self._codec is not None:
            self._codec.to(self.device)
        hooks = self.debias_hooks()
        missing = pipeline.needs - set(hooks)
        if missing:
            raise RuntimeError(f"data.debias needs {sorted(missing)}, which method "
                               f"{type(self).__name__} does not provide")
        pipeline.register(**hooks)

    def source_loss(self, logits: torch.Tensor, src: dict, lff: bool = True) -> torch.Tensor:
        """Mean CE of the (possibly augmented) source batch over its valid pixels: blended
        images train on both label maps (lam, 1 - lam); with LfF each pixel is weighted by its
        (image, class) relative difficulty."""
        self._source_loss_used = True  # checked by task_step
        mask = src["mask"]
        if "lam" in src:
            pixel = mixed_loss(pixel_ce, logits, mask, src["mask_b"], src["lam"],
                               reduction="none")
        else:
            pixel = pixel_ce(logits, mask)
        if lff and self.debias_settings.get("lff"):
            ce_b = pixel_ce(self.biased_logits(src).detach(), mask)
            w = self.lff_stats.preview_pixel_weights(src["index"], ce_b, pixel.detach(), mask)
            self.lff_batch = (src["index"], ce_b, pixel.detach(), mask)  # for lff_update
            pixel = pixel * w
        return valid_mean(pixel, mask)

    def lff_update(self) -> None:
        """After the task step: the batch's per-(image, class) losses into the LfF statistics
        (not those of a skipped, non-finite iteration), then the updates of all DDP ranks merged
        (a collective: every rank runs it at every task step)."""
        if getattr(self, "lff_stats", None) is None:
            return
        pending, self.lff_batch = getattr(self, "lff_batch", None), None
        if pending is not None and all(bool(t.isfinite().all()) for t in pending[1:3]):
            self.lff_stats.update_segmentation(*pending)
        self.lff_stats.all_reduce_()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if getattr(self, "lff_stats", None) is not None:
            checkpoint["lff"] = self.lff_stats.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # before this version the statistics were the datamodule's checkpoint state
        state = checkpoint.get("lff") or checkpoint.get("UDADataModule", {}).get("lff")
        if state is None:
            return
        if getattr(self, "lff_ema", None) is None:
            raise ValueError("the checkpoint holds LfF statistics but data.debias.lff is off: "
                             "resume with data.debias.lff.enabled=true")
        self.setup_lff(int(state["ema_b"].shape[0]))  # outside a fit: sized by the checkpoint
        self.lff_stats.load_state_dict(state)

    def biased_logits(self, src: dict) -> torch.Tensor:
        """The biased network's logits on the step's source images, with gradients: one forward
        per iteration, shared by the LfF weights (detached) and the GCE term."""
        cached = getattr(self, "_biased_out", None)
        if cached is None or cached[0] is not src["image"]:
            cached = self._biased_out = (src["image"], self.biased(src["image"]))
        return cached[1]

    def debias_losses(self, batch) -> dict[str, torch.Tensor]:
        """Extra task-step terms, already weighted: the biased network's GCE on the source."""
        out = {}
        src = batch["source"]
        if self.biased is not None:
            valid = src["mask"] != 255
            gce = gce_loss(self.biased_logits(src), src["mask"], self.debias_settings["gce_q"])
            self._biased_out = None  # the step's last use
            out["gce_biased"] = self.debias_settings["w_biased"] * gce[valid].sum() / valid.sum().clamp(min=1)
        return out
