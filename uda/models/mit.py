"""MiT-B0..B5 segmenter: the Mix Transformer encoder of SegFormer (Xie et al., NeurIPS 2021) with
DAFormer's context-aware fusion head (Hoyer et al., CVPR 2022) or SegFormer's all-MLP head
(`uda.models.mit_heads`).

Encoder implementation: segmentation-models-pytorch (SMP), ``segmentation_models_pytorch.
encoders.mix_transformer.MixVisionTransformer`` with SMP's own B0..B5 settings
(``mix_transformer_encoders``). Why this library:

- timm (1.0.x) has no MiT / SegFormer encoder;
- SMP's MiT is NVIDIA's SegFormer code with its module names kept (``patch_embed1.proj``,
  ``block1.0.attn.q``, ``block1.0.attn.kv``, ``norm1``, ...), so the official ImageNet files
  ``mit_b0.pth`` .. ``mit_b5.pth`` (NVlabs/SegFormer, the ones DAFormer loads from
  ``pretrained/mit_b5.pth``) and SMP's own encoder files load by name, with no tensor converted;
- SMP is maintained and pure PyTorch; it brings timm, huggingface-hub and safetensors, which
  timm-based backbones (DINOv2 ViTs in timm) need anyway, so it costs one small package more;
  it is imported only when a MiT is built (``uda --help`` and other models do not load it);
- HF transformers (``SegformerModel``) would add a large dependency for one encoder, and its
  names differ (``encoder.block.0.0.attention.self.query``, separate key / value); its files
  (``nvidia/mit-bX``) are still accepted: `uda.models.mit_weights` converts them.

The encoder code SMP ships carries NVIDIA's Source Code License (research / non-commercial), as
do the official SegFormer / MiT weights; it is imported, not copied, here.

Architecture (official ``mit_bX`` classes): four stages at strides 4, 8, 16, 32 (overlapping
patch embeddings: 7x7 stride 4, then 3x3 stride 2), widths B0 (32, 64, 160, 256), B1..B5 (64,
128, 320, 512), heads (1, 2, 5, 8), spatial-reduction ratios (8, 4, 2, 1), MLP ratio 4, depths
B0/B1 (2, 2, 2, 2), B2 (3, 4, 6, 3), B3 (3, 4, 18, 3), B4 (3, 8, 27, 3), B5 (3, 6, 40, 3); LayerNorm
eps 1e-6; stochastic depth rate 0.1 (DAFormer's and SMP's setting).

Contract (shared by every segmenter in `uda.models`):
- ``forward(x)``: ``x`` (B,3,H,W) float, ImageNet-normalised RGB -> logits (B,num_classes,H,W) at
  input size, any H, W (the stride-4 head logits upsampled bilinearly, align_corners=False);
- ``forward(x, return_features=True)`` -> ``(logits, {"enc": stage 4 (B,C4,ceil(H/32),
  ceil(W/32)), "stages": [stage 1..4]})``; stage i has ``stage_channels[i]`` channels at stride
  4 * 2**i (ceil); "enc" is what DAFormer's ImageNet feature distance compares;
- ``param_groups(lr)``: DAFormer's optimizer settings (mmseg ``paramwise_cfg``: ``head``
  lr_mult 10, ``norm`` decay_mult 0): encoder at ``lr``; the encoder's LayerNorm weights and
  biases (every encoder parameter whose name holds "norm") at ``lr`` with ``weight_decay`` 0;
  the decode head at ``10 * lr`` (with weight decay: its BatchNorms are named ``bn``);
- ``num_classes``, ``stage_channels``, ``load_report``. No ``freeze_bn`` (the encoder has no
  BatchNorm).

Toy size (CPU): B0 with ``head_dim=64`` trains at about the speed of the small CPU network
(the DAFormer head dominates the cost at 1/4 resolution: 256 -> 64 makes a 64x128 batch of 4
about 7x faster); the encoder keeps its published widths, so ImageNet files still fit.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from uda.models.mit_heads import HEADS
from uda.models.weights import LoadReport

VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5")


def encoder_settings(variant: str) -> dict:
    """SMP's constructor arguments of ``mit_<variant>`` (its ``out_channels`` dropped)."""
    if variant not in VARIANTS:
        raise ValueError(f"MiT variant {variant!r} is not one of {', '.join(VARIANTS)}")
    from segmentation_models_pytorch.encoders.mix_transformer import mix_transformer_encoders
    params = dict(mix_transformer_encoders[f"mit_{variant}"]["params"])
    params.pop("out_channels")
    return params


def mit_encoder(variant: str) -> nn.Module:
    """SMP's MixVisionTransformer ``mit_<variant>``: (B,3,H,W) -> list of the 4 stage maps."""
    from segmentation_models_pytorch.encoders.mix_transformer import MixVisionTransformer
    params = encoder_settings(variant)
    encoder = MixVisionTransformer(**params)
    encoder.stage_channels = list(params["embed_dims"])
    return encoder


class MiTSegmenter(nn.Module):
    """MiT encoder (``backbone``) + decode head (``decode_head``); see the module docstring.

    Args:
        num_classes: output channels (19 for Cityscapes).
        variant: "b0" .. "b5".
        head: "daformer" (context-aware fusion) or "segformer" (all-MLP).
        head_dim: the head's embedding / fusion width (DAFormer 256).
        pretrained: a local weights file (formats: `uda.models.mit_weights`) or None.
    """

    def __init__(self, num_classes: int = 19, variant: str = "b5", head: str = "daformer",
                 head_dim: int = 256, pretrained: str | Path | None = None):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"MiT head {head!r} is not one of {', '.join(HEADS)}")
        self.num_classes = num_classes
        self.variant = variant
        self.backbone = mit_encoder(variant)
        self.stage_channels = self.backbone.stage_channels
        self.decode_head = HEADS[head](self.stage_channels, num_classes, head_dim)
        self.load_report: LoadReport | None = None
        if pretrained is not None:
            self.load_report = self.load_pretrained(pretrained)

    def load_pretrained(self, path: str | Path) -> LoadReport:
        """Load a local weights file (format detected: `uda.models.mit_weights.mit_format`);
        WeightsError / FileNotFoundError naming the file when it does not fit."""
        from uda.models.mit_weights import load_mit_weights
        return load_mit_weights(self, path)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        stages = self.backbone(x)
        logits = F.interpolate(self.decode_head(stages), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)
        if return_features:
            return logits, {"enc": stages[-1], "stages": stages}
        return logits

    def param_groups(self, lr: float) -> list[dict]:
        """Encoder at lr, encoder norms at lr without weight decay, head at 10 * lr."""
        enc = [(n, p) for n, p in self.backbone.named_parameters() if p.requires_grad]
        return [
            {"name": "backbone", "lr": lr, "lr_mult": 1.0,
             "params": [p for n, p in enc if "norm" not in n]},
            {"name": "backbone_norms", "lr": lr, "lr_mult": 1.0, "weight_decay": 0.0,
             "params": [p for n, p in enc if "norm" in n]},
            {"name": "heads", "lr": 10 * lr, "lr_mult": 10.0,
             "params": [p for p in self.decode_head.parameters() if p.requires_grad]},
        ]
