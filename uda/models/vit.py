"""DINOv2 ViT-S/14, ViT-B/14, ViT-L/14 segmenters: timm's DINOv2 ViTs + a multi-level head.

The backbone is timm's ``vit_{small,base,large}_patch14_dinov2`` (created with
``pretrained=False``: nothing is downloaded; weights come from local files, see
`uda.models.vit_weights`). timm because it is the maintained library that has these exact
networks (parameter names of its DINOv2 weights, 518x518 position embeddings), position
embeddings interpolated to any patch grid at forward time (``dynamic_img_size=True``, as DINOv2's
own ``interpolate_pos_encoding``), ``forward_intermediates`` (the tokens of chosen blocks as
maps) and the conversion of the official facebookresearch/dinov2 checkpoints
(``checkpoint_filter_fn``). Input: the data pipeline's ImageNet-normalised RGB, what DINOv2
expects.

Contract (the segmenter interface of `uda.models`):

- ``forward(x)``: (B,3,H,W) -> logits (B,num_classes,H,W) for any H, W: the image is padded
  (zeros, bottom / right) to a multiple of 14, the logits (stride 3.5, `uda.models.pyramid_head`)
  upsampled bilinearly to the padded size and cropped back;
- ``forward(x, return_features=True)`` -> ``(logits, feats)``: ``feats["levels"]`` the four
  chosen blocks' patch tokens after the backbone's final LayerNorm (as DINOv2's
  ``get_intermediate_layers(norm=True)``), each (B, D, ceil(H/14), ceil(W/14)), shallow to deep;
  ``feats["enc"]`` the deepest of them (a feature distance to a frozen copy compares these);
- ``param_groups(lr)``: the head at ``10 * lr``; backbone block i (of n) at
  ``lr * layer_decay ** (n - 1 - i)`` (the final norm with the last block), the embeddings
  (patch, position, class token) at ``lr * layer_decay ** n``. VFM-UDA and VFM-UDA++ train the
  backbone at 0.1x the head's learning rate (``lr_multiplier: 0.1``) and VFM-UDA++ decays it
  by 0.9 per block from the last (``layerwise_lr_decay: 0.9``, the embeddings one step below the
  first block): the default ``layer_decay=0.9`` here; 1.0 gives DAFormer's backbone x1 / head
  x10. No weight-decay exemptions (norms, biases and embeddings decay as the rest);
- ``num_classes``; no ``freeze_bn`` (the backbone has no BatchNorm).

Importing this module imports timm (seconds): `uda.build` imports it for model.name=dinov2 only.

Toy sizes: ``depth`` / ``dim`` (config ``model.vit_depth`` / ``model.vit_dim``) replace the
variant's number of blocks / width (the head count stays the variant's); such a network does
not take the published weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from uda.models.pyramid_head import PyramidHead
from uda.models.vit_weights import load_vit_weights
from uda.models.weights import LoadReport

PATCH = 14
HEADS = ("multilevel",)


@dataclass(frozen=True)
class Variant:
    timm_name: str
    dim: int
    depth: int
    heads: int


VARIANTS = {
    "s": Variant("vit_small_patch14_dinov2", 384, 12, 6),
    "b": Variant("vit_base_patch14_dinov2", 768, 12, 12),
    "l": Variant("vit_large_patch14_dinov2", 1024, 24, 16),
}


def default_out_indices(depth: int) -> tuple[int, ...]:
    """Four evenly spaced blocks ending with the last: (2, 5, 8, 11) of 12, (5, 11, 17, 23) of
    24 (the blocks DINOv2's and ViT-Adapter's dense heads read)."""
    return tuple((i + 1) * depth // 4 - 1 for i in range(4))


class ViTSegmenter(nn.Module):
    """A DINOv2 ViT (``variant`` s|b|l, or reduced by ``depth`` / ``dim``) with the multi-level
    pyramid head on the tokens of the blocks ``out_indices`` (default: `default_out_indices`).

    Args:
        num_classes: output channels.
        variant: "s" (ViT-S/14), "b" (ViT-B/14), "l" (ViT-L/14).
        head: "multilevel" (`uda.models.pyramid_head.PyramidHead`).
        pretrained: local weights file (`uda.models.vit_weights`: timm state dict, .pth or
            .safetensors; the official facebookresearch/dinov2 checkpoint; our own / a run's).
        out_indices: four increasing block indices.
        depth, dim: replace the variant's number of blocks / embedding width (toy runs).
        layer_decay: per-block learning-rate decay of the backbone (module docstring).
        checkpointing: activation checkpointing of the blocks (timm's grad checkpointing).
    """

    def __init__(self, num_classes: int = 19, variant: str = "s", head: str = "multilevel",
                 pretrained: str | Path | None = None, out_indices=None,
                 depth: int | None = None, dim: int | None = None, layer_decay: float = 0.9,
                 checkpointing: bool = False):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is not one of {', '.join(VARIANTS)}")
        if head not in HEADS:
            raise ValueError(f"head={head!r} is not one of {', '.join(HEADS)}")
        v = VARIANTS[variant]
        self.num_classes, self.variant, self.layer_decay = num_classes, variant, layer_decay
        self.patch_size = PATCH
        self.depth, self.embed_dim = depth or v.depth, dim or v.dim
        self.reduced = (self.depth, self.embed_dim) != (v.depth, v.dim)
        if self.embed_dim % math.lcm(8, v.heads):
            raise ValueError(f"dim={self.embed_dim} must be a multiple of {v.heads} (heads of "
                             f"ViT-{variant.upper()}) and of 8 (the head halves it three times)")
        self.out_indices = tuple(out_indices or default_out_indices(self.depth))
        if (len(self.out_indices) != 4 or sorted(set(self.out_indices)) != list(self.out_indices)
                or self.out_indices[0] < 0 or self.out_indices[-1] >= self.depth):
            raise ValueError(f"out_indices={self.out_indices} must be 4 increasing block indices "
                             f"in 0..{self.depth - 1}")
        self.backbone = timm.create_model(v.timm_name, pretrained=False, num_classes=0,
                                          dynamic_img_size=True, depth=self.depth,
                                          embed_dim=self.embed_dim)
        self.backbone.set_grad_checkpointing(checkpointing)  # backward recomputes each block
        self.head = PyramidHead(self.embed_dim, num_classes)
        self.load_report: LoadReport | None = None
        if pretrained is not None:
            self.load_report = self.load_pretrained(pretrained)

    @property
    def description(self) -> str:
        """E.g. 'DINOv2 ViT-S/14 (embed_dim 384, depth 12)'."""
        return (f"DINOv2 ViT-{self.variant.upper()}/14{' reduced' if self.reduced else ''} "
                f"(embed_dim {self.embed_dim}, depth {self.depth})")

    @staticmethod
    def variant_for(dim: int, depth: int) -> str | None:
        """The variant with this width and depth, if any."""
        return next((k for k, v in VARIANTS.items() if (v.dim, v.depth) == (dim, depth)), None)

    def load_pretrained(self, path: str | Path) -> LoadReport:
        """Load a local weights file (formats of `uda.models.vit_weights`); every backbone tensor
        must come from it. Raises FileNotFoundError / WeightsError naming the file."""
        return load_vit_weights(self, path)

    def heads(self) -> list[nn.Module]:
        """The newly initialised modules (10x learning rate)."""
        return [self.head]

    def param_groups(self, lr: float) -> list[dict]:
        blocks = list(self.backbone.blocks)
        n, decay = len(blocks), self.layer_decay
        in_blocks = {id(p) for p in self.backbone.blocks.parameters()}
        norm = list(self.backbone.norm.parameters())
        embed = [p for p in self.backbone.parameters()
                 if id(p) not in in_blocks and all(p is not q for q in norm)]
        groups = [("heads", 10.0, list(self.head.parameters()))]
        groups += [(f"backbone.blocks.{i}", decay ** (n - 1 - i),
                    list(b.parameters()) + (norm if i == n - 1 else []))
                   for i, b in enumerate(blocks)]
        groups.append(("backbone.embed", decay ** n, embed))
        out = []
        for name, mult, params in groups:
            params = [p for p in params if p.requires_grad]
            if params:
                out.append({"name": name, "lr": lr * mult, "lr_mult": mult, "params": params})
        return out

    def forward(self, x: torch.Tensor, return_features: bool = False):
        h, w = x.shape[-2:]
        ph, pw = (-h) % PATCH, (-w) % PATCH
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        levels = self.backbone.forward_intermediates(
            x, indices=list(self.out_indices), norm=True, stop_early=True, output_fmt="NCHW",
            intermediates_only=True)
        logits = F.interpolate(self.head(levels), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)[..., :h, :w]
        if return_features:
            return logits, {"enc": levels[-1], "levels": levels}
        return logits
