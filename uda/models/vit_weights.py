"""The DINOv2 ViT weight files `uda.models.vit.ViTSegmenter` reads, detected from their keys:

- the official facebookresearch/dinov2 backbone checkpoint (``dinov2_vits14_pretrain.pth``,
  ``..._vitb14_...``, ``..._vitl14_...``): timm's names plus ``mask_token`` (dropped); blocks
  saved in chunks (``blocks.<chunk>.<i>.*``, ``block_chunks > 0``) are unchunked;
- a timm state dict of ``vit_{small,base,large}_patch14_dinov2`` (``.pth`` or ``.safetensors``,
  e.g. the ``model.safetensors`` of timm's hub weights): ``patch_embed.proj.weight``,
  ``blocks.0.attn.qkv.weight``, ``pos_embed``, ...; a classifier ``head.*`` is unused;
- our own names (``backbone.*``, ``head.*``): a ViTSegmenter state dict or a uda run checkpoint
  (the head loads when the class count matches).

The official and timm files go through timm's own ``checkpoint_filter_fn`` (the one timm applies
to its DINOv2 downloads: official names -> timm's, position embeddings resampled to the
network's 37x37 grid when the file's differs). A file whose width, depth or patch size differs
from the network, a DINOv2 with registers, or one that leaves any backbone tensor unset is
refused with a WeightsError naming the file, what it holds and what the network expects.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from uda.models.weights import LoadReport, WeightsError, WeightsFormat, load_weights

OFFICIAL = "official DINOv2 checkpoint (facebookresearch/dinov2)"
TIMM = "timm DINOv2 ViT state dict"
OWN = "DINOv2 ViT segmenter state dict (our names)"
_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def load_vit_weights(net, path: str | Path) -> LoadReport:
    """Load the file at ``path`` into ``net`` (a ViTSegmenter: its ``backbone``, ``embed_dim``,
    ``depth``, ``patch_size``, ``description``, ``reduced`` and ``variant_for``); every backbone
    tensor must be loaded. Returns the LoadReport; raises FileNotFoundError / WeightsError
    naming the file."""
    report = load_weights(net, path, lambda keys, obj: vit_format(net, path, keys, obj))
    unset = [n for n in report.uninitialised if n.startswith("backbone.")]
    if unset:
        raise WeightsError(f"{path} ({report.format}) leaves {len(unset)} backbone tensors of "
                           f"{net.description} unset (e.g. {unset[:3]}): give a complete "
                           "DINOv2 backbone checkpoint")
    return report


def vit_format(net, path, keys: list[str], obj=None) -> WeightsFormat:
    """The format of a ViT weights file from its (wrapper-stripped) keys, with the conversion of
    its tensors to ``net``'s names."""
    if any(k.startswith("backbone.") for k in keys):
        info = obj.get("uda") if isinstance(obj, dict) else None
        name = (f"uda run checkpoint (iteration {info.get('step', '?')})"
                if isinstance(info, dict) else OWN)
        return WeightsFormat(name, _same, convert=lambda sd: _own(sd, net, path, name))
    if "mask_token" in keys or any(_CHUNKED.match(k) for k in keys):
        return WeightsFormat(OFFICIAL, _same, convert=lambda sd: _backbone(sd, net, path, OFFICIAL),
                             skipped="its mask_token is dropped by the conversion")
    if "patch_embed.proj.weight" in keys:
        return WeightsFormat(TIMM, _same, convert=lambda sd: _backbone(sd, net, path, TIMM))
    raise WeightsError(
        f"{path} is not a DINOv2 ViT weights file: expected timm's names (patch_embed.proj.weight, "
        "blocks.0.attn.qkv.weight, pos_embed, ...; a timm state dict, .pth or .safetensors), the "
        "official facebookresearch/dinov2 checkpoint (the same names and mask_token, e.g. "
        "dinov2_vits14_pretrain.pth) or a model.name=dinov2 checkpoint (backbone.*); its keys "
        f"are e.g. {keys[:3]}")


def _same(key: str) -> tuple[str, ...]:
    return (key,)


def _own(sd: dict, net, path, name: str) -> dict:
    """Our names: the backbone part checked and filtered like a timm file, the rest as is. A
    file without a ViT backbone passes unchanged (refused later: nothing fits, or a run
    checkpoint of another model, with its own message)."""
    backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    if "patch_embed.proj.weight" not in backbone:
        return sd
    rest = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    return {**rest, **_backbone(backbone, net, path, name)}


def _backbone(sd: dict, net, path, name: str) -> dict:
    """A backbone state dict (official or timm names) checked against ``net`` and converted with
    timm's checkpoint_filter_fn, under ``backbone.``."""
    sd = {_CHUNKED.sub(r"blocks.\1.", k): v for k, v in sd.items()}
    _check_fits(sd, net, path, name)
    return {"backbone." + k: v for k, v in checkpoint_filter_fn(sd, net.backbone).items()}


def _check_fits(sd: dict, net, path, name: str) -> None:
    """WeightsError unless the file's ViT has the network's width, depth and patch size."""
    if "register_tokens" in sd or "reg_token" in sd:
        raise WeightsError(f"{path} ({name}) is a DINOv2 with registers; {net.description} has "
                           "none: use the checkpoint without registers (e.g. "
                           "dinov2_vits14_pretrain.pth)")
    weight = sd.get("patch_embed.proj.weight")
    if weight is None or weight.ndim != 4:
        raise WeightsError(f"{path} ({name}) has no ViT patch embedding "
                           "(patch_embed.proj.weight, a 4-d convolution weight)")
    dim, patch = weight.shape[0], weight.shape[-1]
    depth = 1 + max((int(m.group(1)) for m in map(_BLOCK.match, sd) if m), default=-1)
    if (dim, depth, patch) == (net.embed_dim, net.depth, net.patch_size):
        return
    match = net.variant_for(dim, depth)
    if match and patch == net.patch_size:
        fix = f"set model.vit_variant={match}" + (
            " and leave model.vit_depth / model.vit_dim unset" if net.reduced else "")
    else:
        fix = ("model.name=dinov2 takes DINOv2 ViT-S/14, ViT-B/14 or ViT-L/14 weights "
               "(embed_dim 384 / 768 / 1024, depth 12 / 12 / 24, patch size 14)")
    raise WeightsError(f"{path} ({name}) holds a ViT with embed_dim {dim}, depth {depth}, patch "
                       f"size {patch}; the network is {net.description}, patch size "
                       f"{net.patch_size}: {fix}")
