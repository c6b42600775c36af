"""DRANet recipe (Lee, Cho, Im, CVPR 2021) as a Lightning module with three optimizers.

One training iteration (source x_s with labels, unlabelled target x_t):
  translate  E/S split both batches into content and style; x_st = G(c_s + CADT-mixed target
             styles), x_ts = G(c_t + mixed source styles); reconstructions G(c + s).
  D step     per-domain PatchGANs: real x_t vs x_st, real x_s vs x_ts (translations detached).
  E/S/G step reconstruction + adversarial + perceptual content (vs the input) and Gram style
             (vs CADT-mixed target Grams) + consistency (re-encoded content/style of x_st, x_ts).
  task step  segmenter on x_st (the source labels still hold) and on raw x_s; by default the task
             loss does not reach E/S/G (translations detached); `task_to_translator` adds it to
             the E/S/G step instead.
Perceptual features of real images are computed once per iteration, without gradients.
Images from the datamodule are normalised with (mean, std); the translator works in [-1, 1].
"""
from __future__ import annotations

from functools import partial
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from uda.losses import segmentation_ce
from uda.losses.gan import discriminator_loss, generator_loss
from uda.losses.translation import (consistency_loss, content_loss, gram_matrix,
                                    layout_colour_loss, reconstruction_loss, style_loss)
from uda.models.dranet import DRANetTranslator
from uda.models.perceptual import PerceptualNet
from uda.models.translation import PatchDiscriminator, cadt_mix
from uda.modules.base import RecipeParts, SegmentationModule, forward_keeping_buffers

DOMAINS = ("source", "target")


class DRANet(SegmentationModule):
    optimizer_steps_per_iteration = 3

    def __init__(self, segmenter: nn.Module, class_names: Sequence[str],
                 translator: DRANetTranslator, discriminators: Mapping[str, nn.Module],
                 perceptual: PerceptualNet, weights: Mapping[str, float],
                 lr_translator: float = 2e-4, lr_d: float = 2e-4,
                 betas: Sequence[float] = (0.5, 0.999), gan_loss: str = "lsgan",
                 cadt_temperature: float = 0.1, task_to_translator: bool = False,
                 content_norm: bool = True, checkpointing: bool = False,
                 layout_means=None, **common):
        """`common`: SegmentationModule's arguments (max_steps, optim, eval options, ...);
        layout_means: (thumbnail size) -> (source mean thumbnail, target mean thumbnail,
        frames), called at the start of a fresh fit when the translator has a colour transform."""
        super().__init__(segmenter, class_names, **common)
        self.translator = translator
        self.discriminators = nn.ModuleDict(dict(discriminators))
        self.perceptual = perceptual
        self.w = {k: float(v) for k, v in weights.items()}
        self.lr_translator, self.lr_d, self.betas = lr_translator, lr_d, tuple(betas)
        self.gan_loss, self.temperature = gan_loss, cadt_temperature
        self.task_to_translator = task_to_translator
        self.content_norm = content_norm
        self.checkpointing = checkpointing
        self.layout_means = layout_means

    def on_fit_start(self) -> None:
        super().on_fit_start()
        colour = self.translator.colour
        if colour is not None and int(colour.seen) == 0:  # not on resume: the checkpoint has them
            if self.layout_means is None:
                raise RuntimeError("DRANet with a colour transform needs layout_means to train")
            mean_s, mean_t, frames = self.layout_means(colour.thumbnail)
            colour.fit(mean_s, mean_t, frames)

    # --- image spaces ---------------------------------------------------------------------
    @torch.no_grad()
    def panel_images(self, batch) -> dict[str, torch.Tensor]:
        """Source, target and both translations, (B,3,H,W) in [0, 1]."""
        x_s, x_t = batch["source"]["image"], batch["target"]["image"]
        out = self.translate(self.to_unit(x_s), self.to_unit(x_t))
        return {"source": self.to_display(x_s), "target": self.to_display(x_t),
                "source_to_target": (out["x_st"] + 1) / 2, "target_to_source": (out["x_ts"] + 1) / 2}

    # --- optimizers -------------------------------------------------------------------------
    def configure_optimizers(self):
        d = torch.optim.Adam(self.discriminators.parameters(), lr=self.lr_d, betas=self.betas)
        g = torch.optim.Adam(self.translator.parameters(), lr=self.lr_translator, betas=self.betas)
        seg, seg_sched = self.task_optimizer()
        return [d, g, seg], [self.poly(d), self.poly(g), seg_sched]

    # --- the steps ----------------------------------------------------------------------------
    def translate(self, u_s: torch.Tensor, u_t: torch.Tensor) -> dict[str, torch.Tensor]:
        """All translator outputs of one iteration (with gradients). Both domains are encoded
        as one batch (see DRANetTranslator.encode_many)."""
        tr = self.translator
        (c_s, s_s), (c_t, s_t) = tr.encode_many([(u_s, "source"), (u_t, "target")])
        attn_st = tr.attention(c_s, c_t, self.temperature)  # each source picks target styles
        attn_ts = tr.attention(c_t, c_s, self.temperature)
        x_st, style_st = tr.transfer(c_s, s_t, attn_st, u_s, s_s, ("source", "target"))
        x_ts, style_ts = tr.transfer(c_t, s_s, attn_ts, u_t, s_t, ("target", "source"))
        return dict(c_s=c_s, c_t=c_t, s_s=s_s, s_t=s_t,
                    rec_s=tr.decode(c_s, s_s, u_s, s_s, ("source", "source")),
                    rec_t=tr.decode(c_t, s_t, u_t, s_t, ("target", "target")),
                    x_st=x_st, x_ts=x_ts, style_st=style_st, style_ts=style_ts,
                    attn_st=attn_st, attn_ts=attn_ts)

    @torch.no_grad()
    def real_targets(self, u_s: torch.Tensor, u_t: torch.Tensor) -> dict[str, dict]:
        """What the perceptual losses need of the real images, and nothing more: the content
        layer's features and the style layers' Gram matrices, per domain (one no-grad pass over
        both batches; the full feature maps are not kept for the step)."""
        pn, b = self.perceptual, u_s.shape[0]
        feats = pn(torch.cat([u_s, u_t]))
        out = {}
        for name, sl in (("source", slice(0, b)), ("target", slice(b, None))):
            out[name] = {"content": feats[pn.content_layer][sl],
                         "grams": {k: gram_matrix(feats[k][sl]) for k in pn.style_layers}}
        return out

    def perceptual_targets(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(content-layer features, {style layer: Gram matrix}) of translated images x, with
        gradients to x. Only these leave the perceptual network: its full-resolution maps are
        never kept beyond the Gram computation. With activation checkpointing each image is a
        separate checkpoint, so backward recomputes one image's activations at a time."""
        pn = self.perceptual

        def targets(img):
            feats = pn(img)
            return (feats[pn.content_layer], *(gram_matrix(feats[k]) for k in pn.style_layers))

        if self.checkpointing and torch.is_grad_enabled():
            parts = [checkpoint(targets, xi, use_reentrant=False) for xi in x.split(1)]
            outs = [torch.cat(t) for t in zip(*parts)]
        else:
            outs = list(targets(x))
        return outs[0], dict(zip(pn.style_layers, outs[1:]))

    def d_loss(self, u_s, u_t, out) -> torch.Tensor:
        d = self.discriminators
        return (discriminator_loss(d["target"](u_t), d["target"](out["x_st"].detach()), self.gan_loss)
                + discriminator_loss(d["source"](u_s), d["source"](out["x_ts"].detach()), self.gan_loss))

    def translator_losses(self, u_s, u_t, out, real, mask_s) -> dict[str, torch.Tensor]:
        """E/S/G losses; `real`: what `real_targets` returned for this batch."""
        d, tr = self.discriminators, self.translator
        b = out["x_st"].shape[0]
        content_q, grams_q = self.perceptual_targets(torch.cat([out["x_st"], out["x_ts"]]))
        mixed_t = {k: cadt_mix(out["attn_st"], v) for k, v in real["target"]["grams"].items()}
        mixed_s = {k: cadt_mix(out["attn_ts"], v) for k, v in real["source"]["grams"].items()}
        (c_st, s_st), (c_ts, s_ts) = tr.encode_many([(out["x_st"], "target"),
                                                     (out["x_ts"], "source")])
        losses = {
            "rec": reconstruction_loss(out["rec_s"], u_s) + reconstruction_loss(out["rec_t"], u_t),
            "adv": generator_loss(d["target"](out["x_st"]), self.gan_loss)
                   + generator_loss(d["source"](out["x_ts"]), self.gan_loss),
            "content": content_loss(content_q[:b], real["source"]["content"], self.content_norm)
                       + content_loss(content_q[b:], real["target"]["content"], self.content_norm),
            "style": style_loss({k: g[:b] for k, g in grams_q.items()}, mixed_t)
                     + style_loss({k: g[b:] for k, g in grams_q.items()}, mixed_s),
            "consistency": consistency_loss(c_st, out["c_s"]) + consistency_loss(s_st, out["style_st"])
                           + consistency_loss(c_ts, out["c_t"]) + consistency_loss(s_ts, out["style_ts"]),
        }
        if tr.colour is not None:  # each colour map takes one domain's mean layout to the other's
            src, tgt = tr.colour.means
            st, ts = ("source", "target"), ("target", "source")
            losses["layout"] = (
                layout_colour_loss(*tr.colour.matrix(out["s_s"], out["style_st"], st), src, tgt)
                + layout_colour_loss(*tr.colour.matrix(out["s_t"], out["style_ts"], ts), tgt, src))
        if self.task_to_translator:
            # segmenter frozen here (toggled off): the gradient reaches E/S/G only; its BN
            # statistics are those of the task step alone (this forward must not move them)
            logits = forward_keeping_buffers(self.segmenter, self.from_unit(out["x_st"]))
            losses["task_translator"] = segmentation_ce(logits, mask_s)
        return losses

    trains_style_codec = True

    def codec_translator(self) -> nn.Module:
        return self.translator  # style swap uses the translator being trained (no gradients)

    def weighted(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.w[k] * v for k, v in losses.items())

    def task_losses(self, batch, x_st) -> dict[str, torch.Tensor]:
        """Segmentation on the translated and the raw (augmented) source (unweighted); LfF
        weights the translated term."""
        src = batch["source"]
        return {"seg_translated": self.source_loss(self.segmenter(self.from_unit(x_st)), src),
                "seg_source": self.source_loss(self.segmenter(src["image"]), src, lff=False)}

    def training_step(self, batch, batch_idx):
        opt_d, opt_g, opt_seg = self.optimizers()
        x_s, mask_s, x_t = batch["source"]["image"], batch["source"]["mask"], batch["target"]["image"]
        u_s, u_t = self.to_unit(x_s), self.to_unit(x_t)
        real = self.real_targets(u_s, u_t)  # once per iteration, no gradients

        self.toggle_optimizer(opt_g)  # translate with gradients for E/S/G only
        out = self.translate(u_s, u_t)
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        loss_d = self.d_loss(u_s, u_t, out)
        ok = self.backward_step(opt_d, loss_d, "discriminator")
        self.untoggle_optimizer(opt_d)
        if not ok:
            return

        self.toggle_optimizer(opt_g)
        g_losses = self.translator_losses(u_s, u_t, out, real, mask_s)
        ok = self.backward_step(opt_g, self.weighted(g_losses), "translator")
        self.untoggle_optimizer(opt_g)
        if not ok:
            return

        self.toggle_optimizer(opt_seg)
        t_losses = self.task_losses(batch, out["x_st"].detach())
        ok, extra = self.task_step(opt_seg, {"task": self.weighted(t_losses)}, batch, "task")
        t_losses.update({k: v for k, v in extra.items() if k != "task"})  # debiasing terms
        self.untoggle_optimizer(opt_seg)
        if not ok:
            return

        for sched in self.lr_schedulers():
            sched.step()
        self.log_dict({f"train/{k}": v.detach() for k, v in {**g_losses, **t_losses}.items()})
        self.log("train/loss_d", loss_d.detach())
        self.log("train/loss_seg", t_losses["seg_translated"].detach(), prog_bar=True)


def build_translator(r) -> DRANetTranslator:
    """The translator of a `method.dranet` settings section."""
    return DRANetTranslator(width=r.width, num_down=r.num_down, num_res=r.num_res,
                            enc_norm=r.enc_norm, checkpointing=r.checkpointing,
                            colour_transform=r.colour_transform)


def build(r, parts: RecipeParts) -> DRANet:
    """The recipe of a `method.dranet` settings section (translator, one PatchGAN per domain,
    perceptual network, then the task network: that order fixes the random initialisation)."""
    translator = build_translator(r)
    discriminators = {d: PatchDiscriminator(3, width=r.d_width, num_layers=r.d_layers)
                      for d in DOMAINS}
    perceptual = PerceptualNet(r.perceptual, content_layer=r.content_layer,
                               style_layers=tuple(r.style_layers), weights=r.perceptual_weights)
    weights = {"rec": r.w_rec, "adv": r.w_adv, "content": r.w_content, "style": r.w_style,
               "consistency": r.w_consistency, "layout": r.w_layout,
               "task_translator": r.w_task_translator, "seg_translated": r.w_seg_translated,
               "seg_source": r.w_seg_source}
    return DRANet(parts.segmenter(), parts.class_names, translator=translator,
                  discriminators=discriminators, perceptual=perceptual, weights=weights,
                  lr_translator=r.lr_translator, lr_d=r.lr_d, betas=tuple(r.betas),
                  gan_loss=r.gan_loss, cadt_temperature=r.cadt_temperature,
                  task_to_translator=r.task_to_translator, content_norm=r.content_norm,
                  checkpointing=r.checkpointing,
                  layout_means=partial(parts.domain_means, r.colour_frames), **parts.common)
