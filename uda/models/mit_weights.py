"""The weight files `MiTSegmenter` knows, detected from their keys (after the wrapper prefixes
``module.``, ``model.``, ... are stripped) by the first rule that holds:

- ``segformer.encoder.*`` / ``encoder.patch_embeddings.*``: HuggingFace transformers
  (``nvidia/mit-bX`` ImageNet files, any ``Segformer*`` model; ``pytorch_model.bin`` or
  ``model.safetensors``; what ``save_pretrained`` writes), or ``segformer.stages.*`` /
  ``stages.*``: a transformers >= 5 ``state_dict()`` (its module names, first mapped back to
  the former: ``stages.i.blocks`` -> ``encoder.block.i``, ``q/k/v_proj`` -> ``attention.self.
  query/key/value``, ``o_proj`` -> ``attention.output.dense``, ...). Converted to the official
  names: ``patch_embeddings.i`` -> ``patch_embed{i+1}`` (``layer_norm`` -> ``norm``),
  ``block.i.j`` -> ``block{i+1}.j`` (``layer_norm_1/2`` -> ``norm1/2``,
  ``attention.self.query`` -> ``attn.q``, ``key`` and
  ``value`` concatenated (key first) -> ``attn.kv``, ``attention.self.sr/layer_norm`` ->
  ``attn.sr/norm``, ``attention.output.dense`` -> ``attn.proj``, ``mlp.dense1/2`` ->
  ``mlp.fc1/2``), ``layer_norm.i`` -> ``norm{i+1}``. Encoder only: its classifier and decode
  head are skipped.
- ``encoder.patch_embed1.*``: a segmentation-models-pytorch model (``smp.Segformer``,
  ``smp.Unet`` ... with a ``mit_bX`` encoder): ``encoder.*`` is the encoder under the official
  names; its decoder and segmentation head are skipped.
- ``backbone.patch_embed1.*`` (or any uda run checkpoint): our names, which are mmseg's: a uda
  run checkpoint, a state dict of `MiTSegmenter`, or a DAFormer / SegFormer (mmseg) checkpoint;
  the decode head loads when it has the configured head's names and shapes. A DAFormer training
  checkpoint's ``ema_model.*`` and ``imnet_model.*`` copies are skipped (its ``model.*`` is the
  network).
- ``patch_embed1.*``: the official SegFormer ImageNet files ``mit_b0.pth`` .. ``mit_b5.pth``
  (NVlabs; DAFormer's ``pretrained/mit_b5.pth``) and SMP's own encoder files (the same names):
  the encoder; the ImageNet classifier ``head.*`` is skipped.

Anything else is refused (`WeightsError` naming the file and the expected keys). So is a file of
another MiT variant (its stage widths and depths, read from the file, must be the network's:
the message names the variant to set), which would otherwise load in part.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from uda.models.weights import (LoadReport, WeightsError, WeightsFormat, _state_dict,
                                load_weights, strip_wrapper_prefixes)

HF = "HuggingFace transformers Segformer (encoder converted to the official names)"
SMP_MODEL = "segmentation-models-pytorch model with a mit_bX encoder"
OURS = "MiTSegmenter / mmseg DAFormer or SegFormer names (backbone.*, decode_head.*)"
OFFICIAL = "official SegFormer MiT ImageNet (NVlabs mit_bX.pth; SMP encoder file)"
EXPECTED = ("keys like 'patch_embed1.proj.weight', 'block1.0.attn.q.weight' (official SegFormer "
            "mit_bX.pth, SMP encoder), 'encoder.patch_embed1.*' (SMP model), "
            "'backbone.patch_embed1.*' (uda run, DAFormer / mmseg SegFormer checkpoint) or "
            "'segformer.encoder.patch_embeddings.*' (HuggingFace nvidia/mit-bX)")
_DAFORMER_COPIES = ("ema_model.", "imnet_model.")
# HF encoder keys: the hub's names, transformers >= 5 module names (``stages.i``)
_HF_ENCODER = ("segformer.encoder.", "encoder.patch_embeddings.", "segformer.stages.",
               "stages.0.patch_embeddings.")

# (official widths, depths) of each published variant, for naming a file's variant
PUBLISHED = {
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2]),
    "b1": ([64, 128, 320, 512], [2, 2, 2, 2]),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3]),
    "b3": ([64, 128, 320, 512], [3, 4, 18, 3]),
    "b4": ([64, 128, 320, 512], [3, 8, 27, 3]),
    "b5": ([64, 128, 320, 512], [3, 6, 40, 3]),
}


def _is_encoder(key: str) -> bool:
    return re.match(r"(patch_embed|block|norm)[1-4]\.", key) is not None


def mit_format(keys: list[str], obj, path) -> WeightsFormat:
    """The format of a MiT weights file from its wrapper-stripped keys (module docstring);
    WeightsError naming ``path`` when no rule holds."""
    if any(k.startswith(_HF_ENCODER) for k in keys):
        return WeightsFormat(HF, _official, ignore=lambda k: not _is_encoder(k),
                             convert=hf_to_official,
                             skipped="its classifier / decode head is skipped")
    if any(k.startswith("encoder.patch_embed1.") for k in keys):
        return WeightsFormat(SMP_MODEL, lambda k: ("backbone." + k[8:],) if k.startswith(
            "encoder.") else (), ignore=lambda k: not k.startswith("encoder."),
            skipped="its decoder and segmentation head are skipped")
    run = isinstance(obj, dict) and isinstance(obj.get("uda"), dict)
    if run or any(k.startswith("backbone.patch_embed1.") for k in keys):
        # a run of another model is refused by load_weights, naming --resume / --checkpoint
        name = f"uda run checkpoint (iteration {obj['uda'].get('step', '?')})" if run else OURS
        return WeightsFormat(name, lambda k: (k,), ignore=lambda k: k.startswith(_DAFORMER_COPIES),
                             skipped="DAFormer's ema_model / imnet_model copies are skipped")
    if any(k.startswith("patch_embed1.") for k in keys):
        return WeightsFormat(OFFICIAL, _official, ignore=lambda k: k.startswith("head."),
                             skipped="its ImageNet classifier head.* is skipped")
    raise WeightsError(f"pretrained weights file {path} does not hold MiT (SegFormer) encoder "
                       f"weights: expected {EXPECTED}; its {len(keys)} keys start "
                       f"{keys[:3]}")


def _official(key: str) -> tuple[str, ...]:
    return ("backbone." + key,) if _is_encoder(key) else ()


# HF module paths inside an encoder block -> the official ones
_HF_BLOCK = {"layer_norm_1": "norm1", "layer_norm_2": "norm2", "attention.self.query": "attn.q",
             "attention.self.sr": "attn.sr", "attention.self.layer_norm": "attn.norm",
             "attention.output.dense": "attn.proj", "mlp.dense1": "mlp.fc1",
             "mlp.dense2": "mlp.fc2", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv"}


# transformers >= 5 module names (``model.state_dict()``; its save_pretrained and the hub files
# keep the names above) -> those names: the inverse of transformers' own SegformerModel renaming
_HF5_NAMES = [(r"^stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
              (r"^stages\.(\d+)\.blocks\.", r"encoder.block.\1."),
              (r"^stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1."),
              (r"\.attention\.q_proj\.", ".attention.self.query."),
              (r"\.attention\.k_proj\.", ".attention.self.key."),
              (r"\.attention\.v_proj\.", ".attention.self.value."),
              (r"\.attention\.o_proj\.", ".attention.output.dense."),
              (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.self.sr."),
              (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.self.layer_norm."),
              (r"\.mlp\.fc([12])\.", r".mlp.dense\1."),
              (r"\.layernorm_before\.", ".layer_norm_1."),
              (r"\.layernorm_after\.", ".layer_norm_2.")]


def _hf_legacy(key: str) -> str:
    """An HF encoder key under the hub's names (``encoder.block.i.j...``), ``segformer.`` off."""
    key = key.removeprefix("segformer.")
    if key.startswith("stages."):
        for pattern, name in _HF5_NAMES:
            key = re.sub(pattern, name, key)
    return key


def hf_to_official(src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A HuggingFace Segformer state dict with its encoder under the official MiT names (module
    docstring); keys outside the encoder are kept as they are (then skipped)."""
    src = {_hf_legacy(k): v for k, v in src.items()}
    out: dict[str, torch.Tensor] = {}
    for k, t in src.items():
        top = re.match(r"encoder\.(patch_embeddings|layer_norm)\.(\d+)\.(.+)", k)
        blk = re.match(r"encoder\.block\.(\d+)\.(\d+)\.(.+)\.(weight|bias)$", k)
        value = k.replace(".attention.self.key.", ".attention.self.value.")
        if top:
            kind, i, rest = top.groups()
            stage = int(i) + 1
            out[f"patch_embed{stage}.{rest.replace('layer_norm', 'norm')}"
                if kind == "patch_embeddings" else f"norm{stage}.{rest}"] = t
        elif blk and blk.group(3) == "attention.self.key" and value in src:
            i, j, _, p = blk.groups()
            out[f"block{int(i) + 1}.{j}.attn.kv.{p}"] = torch.cat([t, src[value]], 0)
        elif blk and blk.group(3) in _HF_BLOCK:
            i, j, path, p = blk.groups()
            out[f"block{int(i) + 1}.{j}.{_HF_BLOCK[path]}.{p}"] = t
        elif not (blk and blk.group(3) == "attention.self.value"):
            out[k] = t
    return out


def file_architecture(src: dict[str, torch.Tensor], fmt: WeightsFormat
                      ) -> tuple[list[int], list[int]]:
    """(stage widths, depths) of the MiT encoder in a state dict of format ``fmt`` (after its
    conversion): widths from ``patch_embed{i}.proj.weight``, depths from the ``block{i}.{j}``
    indices; 0 where absent."""
    if fmt.convert is not None:
        src = fmt.convert(src)
    widths, depths = [0] * 4, [0] * 4
    for key, t in src.items():
        if fmt.ignore(key):
            continue
        name = next(iter(fmt.candidates(key)), "")
        m = re.match(r"backbone\.(patch_embed|block)([1-4])\.(\w+)", name)
        if m is None:
            continue
        s = int(m.group(2)) - 1
        if m.group(1) == "patch_embed" and name.endswith("proj.weight"):
            widths[s] = int(t.shape[0])
        elif m.group(1) == "block" and m.group(3).isdigit():
            depths[s] = max(depths[s], int(m.group(3)) + 1)
    return widths, depths


def _variant_of(widths: list[int], depths: list[int]) -> str | None:
    return next((v for v, arch in PUBLISHED.items() if arch == (widths, depths)), None)


def check_architecture(model, src: dict[str, torch.Tensor], fmt: WeightsFormat, path) -> None:
    """WeightsError naming ``path`` when the file's encoder is not the network's variant."""
    have = (list(model.stage_channels), list(model.backbone.depths))
    got = file_architecture(src, fmt)
    if got == have or not any(got[0] + got[1]):  # no encoder at all: load_weights refuses it
        return
    variant = _variant_of(*got)
    fix = (f"set model.variant={variant}" if variant else
           "use the file of a published MiT-B0..B5 encoder")
    raise WeightsError(f"pretrained weights file {path} ({fmt.name}) holds a MiT encoder with "
                       f"stage widths {got[0]} and depths {got[1]}"
                       f"{f' (mit_{variant})' if variant else ''}; this network is "
                       f"mit_{model.variant} (widths {have[0]}, depths {have[1]}): {fix}")


def load_mit_weights(model, path: str | Path) -> LoadReport:
    """Load a MiT weights file into `MiTSegmenter` ``model`` (format detected and checked, module
    docstring); returns the `LoadReport`."""
    def detect(keys: list[str], obj) -> WeightsFormat:
        fmt = mit_format(keys, obj, path)
        src = {strip_wrapper_prefixes(k): v for k, v in _state_dict(obj, path).items()}
        check_architecture(model, src, fmt, path)
        return fmt

    return load_weights(model, path, detect)
