"""Translation quality as measured quantities: `uda translate --score` and the pieces the
training callback (`uda.translation_callback`) shares with it.

FCN-score (the pix2pix/CycleGAN protocol): a REFERENCE segmenter trained on labelled target
images (e.g. an oracle run's checkpoint; a diagnostic, never used for training or model
selection) segments source frames translated into the target style; its mIoU against the source
labels is reported beside the same reference's mIoU on real target val (what it reaches on real
target images) and on the untranslated source frames (what it reaches without translation).
The reference runs its own evaluation protocol (its `data.eval_transform` and `eval.*`) and is
scored at label resolution. Translated frames are scored exactly as `uda translate` writes them
(8-bit RGB).

Style distance (`uda.metrics.style_distance`): Fréchet distance between per-image colour and
texture descriptors (a fixed random-feature network, `style_net`, the same for every run) of the
source frames, of their translations and of target val; `gap_closed` is the fraction of the
source -> target distance that translation closes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from datamodules.image_io import DatasetError
from datamodules.transforms import SegTransform
from uda import build
from uda.checkpoint_io import config_for, read_checkpoint
from uda.config import ConfigError
from uda.metrics.confusion import confusion_matrix
from uda.metrics.results import results_dict
from uda.metrics.style_distance import style_descriptor, style_distances
from uda.models.perceptual import PerceptualNet
from uda.modules.base import SegmentationModule

#: feature maps whose per-channel statistics form the texture descriptor
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1")
#: descriptors are computed on images whose longer side is at most this (bilinear, antialiased)
DESCRIPTOR_MAX_SIDE = 512


# --- the fixed style network and descriptors ------------------------------------------------
def style_net(device=None) -> PerceptualNet:
    """The fixed descriptor network: PerceptualNet(kind="lite") (fixed-seed random features,
    frozen), relu1_1..relu3_1. Not the run's perceptual network: scores stay comparable across
    runs and configs."""
    net = PerceptualNet("lite", content_layer=STYLE_LAYERS[-1], style_layers=STYLE_LAYERS)
    return net.to(device or "cpu")


def unit_image(image: np.ndarray, device=None) -> torch.Tensor:
    """HxWx3 uint8 RGB -> (1,3,H,W) float in [-1, 1]."""
    u = torch.from_numpy(np.ascontiguousarray(image)).to(device or "cpu")
    return u.permute(2, 0, 1)[None].float().div(127.5).sub(1.0)


def fit_side(u: torch.Tensor, max_side: int) -> torch.Tensor:
    """Downscale (B,3,H,W) so that max(H, W) <= max_side (bilinear, antialiased); no upscaling."""
    h, w = u.shape[-2:]
    if max(h, w) <= max_side:
        return u
    s = max_side / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    return F.interpolate(u, size=size, mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def describe(net: PerceptualNet, u: torch.Tensor,
             max_side: int = DESCRIPTOR_MAX_SIDE) -> torch.Tensor:
    """(B,3,H,W) images in [-1, 1] -> (B, D) style descriptors (float64, CPU)."""
    u = fit_side(u.to(net.mean.device), max_side)
    return style_descriptor(u, net, STYLE_LAYERS).double().cpu()


# --- the reference segmenter ------------------------------------------------------------------
@dataclass
class Reference:
    """A segmentation checkpoint used as a fixed judge: its module (eval mode), its evaluation
    transform, and where it came from."""
    module: SegmentationModule
    transform: SegTransform
    method: str
    path: str

    @property
    def num_classes(self) -> int:
        return len(self.module.class_names)

    @torch.no_grad()
    def labels(self, image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """HxWx3 uint8 RGB -> (h, w) int64 trainIds at `size` (CPU), with the reference's own
        evaluation protocol."""
        x, _ = self.transform(image, None)
        pred = self.module.predict_labels(x[None].to(self.module.device), tuple(size))
        return pred[0].cpu()

    def results(self, cm: torch.Tensor, num_images: int) -> dict:
        return results_dict(cm, num_images, self.module.class_names, self.module.class_subsets)


def load_reference(path, device=None) -> Reference:
    """The reference segmenter of a checkpoint; ConfigError naming the problem when the file is
    missing, unreadable or not a segmentation checkpoint."""
    try:
        ckpt = read_checkpoint(path)
    except DatasetError as e:
        raise ConfigError(f"reference: {e}") from None
    if not (ckpt.get("uda") or {}).get("config"):
        raise ConfigError(f"reference {path}: not a uda segmentation checkpoint (no stored "
                          "config); give a checkpoint of a run trained on labelled target "
                          "images, e.g. an oracle run's last.ckpt")
    if not any(k.startswith("segmenter.") for k in ckpt["state_dict"]):
        raise ConfigError(f"reference {path}: the checkpoint holds no segmenter weights")
    cfg = config_for(ckpt, path, overrides=["eval.translation_reference=null"])
    module = build.load_module(ckpt, cfg, path).to(device or "cpu")
    return Reference(module, build.build_eval_transform(cfg), cfg.method.name, str(path))


# --- accumulation -------------------------------------------------------------------------------
class ImageSet:
    """One scored image set: the reference's confusion matrix against the labels and the style
    descriptors of its images."""

    def __init__(self, num_classes: int | None):
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.long) if num_classes else None
        self.descriptors: list[torch.Tensor] = []
        self.count = 0

    def add(self, image: np.ndarray, mask: np.ndarray | torch.Tensor | None,
            net: PerceptualNet | None, reference: Reference | None, device=None) -> None:
        if net is not None:
            self.descriptors.append(describe(net, unit_image(image, device)))
        if reference is not None and mask is not None:
            mask = torch.as_tensor(np.asarray(mask)).long()
            pred = reference.labels(image, tuple(mask.shape[-2:]))
            self.cm += confusion_matrix(pred, mask, reference.num_classes)
        self.count += 1

    def stacked(self) -> torch.Tensor:
        return torch.cat(self.descriptors)


def evenly_spaced(total: int, n: int | None) -> list[int]:
    """`n` indices spread evenly over range(total) (all of them when n is None or >= total)."""
    if n is None or n >= total:
        return list(range(total))
    if n <= 0:
        raise ConfigError(f"--num-images must be > 0, got {n}")
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, n)})


def fcn_scores(target: dict, source: dict, translated: dict) -> dict:
    """The reference's mIoU on the three sets, the FCN-score and its % of the target-val mIoU."""
    t, s, f = target["mIoU"], source["mIoU"], translated["mIoU"]
    pct = 100.0 * f / t if (t and f is not None) else None
    return {"reference_miou_target_val": t, "reference_miou_source": s, "fcn_score": f,
            "fcn_score_pct_of_target": pct}


# --- `uda translate --score` ----------------------------------------------------------------
def score_translation(module, cfg, bank, input_root, reference: Reference,
                      num_images: int | None = None, translate_fn=None) -> dict:
    """Translate `num_images` source frames (evenly spaced over the split; all by default) at
    full resolution, as `uda translate` writes them, and score them (see the module docstring).
    `translate_fn(module, x, bank) -> (1,3,H,W) in [0, 1]` defaults to
    `uda.translate.translate_frame`."""
    from uda import translate as tr
    translate_fn = translate_fn or tr.translate_frame
    device = module.device
    net = style_net(device)
    source = build.build_source_at(cfg, input_root, labelled=True)
    d = cfg.data
    target_val = build.build_dataset(d.target, d.target_val_split, None, labelled=True)
    sets = {name: ImageSet(reference.num_classes)
            for name in ("target_val", "source", "translated_source")}
    for i in tqdm(range(len(target_val)), desc="score target val", unit="img"):
        image, mask = target_val.load(i)
        sets["target_val"].add(image, mask, net, reference, device)
    for i in tqdm(evenly_spaced(len(source), num_images), desc="score translation", unit="img"):
        image, mask = source.load(i)
        x, _ = source.transform(image, None)
        translated = tr.to_uint8(translate_fn(module, x[None], bank)[0])
        sets["source"].add(image, mask, net, reference, device)
        sets["translated_source"].add(translated, mask, net, reference, device)
    results = {k: reference.results(s.cm, s.count) for k, s in sets.items()}
    style = style_distances(sets["source"].stacked(), sets["translated_source"].stacked(),
                            sets["target_val"].stacked())
    style = {k: None if math.isnan(v) else v for k, v in style.items()}  # JSON has no NaN
    return {"num_source_images": sets["source"].count,
            "num_target_images": sets["target_val"].count,
            "reference": reference.path, "reference_method": reference.method,
            **fcn_scores(results["target_val"], results["source"], results["translated_source"]),
            "style": style, "results": results}


def _fmt(v, spec=".2f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_scores(r: dict) -> str:
    s = r["style"]
    rows = [
        ("reference mIoU, real target val", _fmt(r["reference_miou_target_val"])),
        ("reference mIoU, untranslated source", _fmt(r["reference_miou_source"])),
        ("reference mIoU, translated (FCN-score)", _fmt(r["fcn_score"])),
        ("FCN-score as % of target-val mIoU", _fmt(r["fcn_score_pct_of_target"], ".1f"), " %"),
        ("style Fréchet distance source -> target", _fmt(s["style_fd_source_target"], ".4g")),
        ("style Fréchet distance transl. -> target", _fmt(s["style_fd_translated_target"], ".4g")),
        ("style gap closed", _fmt(s["style_gap_closed"], ".3f"),
         f"  (colour {_fmt(s['colour_gap_closed'], '.3f')}, "
         f"texture {_fmt(s['texture_gap_closed'], '.3f')})"),
    ]
    lines = [
        f"translation quality ({r['num_source_images']} source frames, "
        f"{r['num_target_images']} target val frames; reference: {r['reference_method']} "
        f"checkpoint {r['reference']})",
    ] + [f"  {row[0]:<42}{row[1]:>9}{''.join(row[2:])}" for row in rows]
    if r["reference_method"] != "oracle":
        lines.append(f"  note: the reference is a '{r['reference_method']}' run; the FCN-score "
                     "protocol expects a segmenter trained on labelled target images (oracle)")
    return "\n".join(lines)


def translate_and_score(checkpoint, input_root, reference, output=None, num_styles: int = 16,
                        num_images: int | None = None, score_output=None, config_file=None,
                        overrides=None) -> dict:
    """`uda translate --score`: write the translated set when `output` is given, then score;
    prints the table, writes the JSON to `score_output` when given, returns it."""
    from uda import translate as tr
    from datamodules.atomic_write import write_json_atomic
    device = tr.default_device()
    ref = load_reference(reference, device)  # fail before any translation
    module, cfg = tr.load_translator(checkpoint, config_file, overrides, device)
    bank = tr.target_style_bank(module, cfg, num_styles)
    written = []
    if output is not None:
        n = tr.write_translations(module, bank, build.build_source_at(cfg, input_root),
                                  input_root, output)
        written.append(f"{n} translated source frames written under {output}")
    result = {"checkpoint": str(checkpoint), "input": str(input_root), "num_styles": num_styles,
              **score_translation(module, cfg, bank, input_root, ref, num_images)}
    print(format_scores(result))
    if score_output:
        write_json_atomic(Path(score_output), result)
        written.append(f"scores written to {score_output}")
    print("; ".join([f"uda: FCN-score {_fmt(result['fcn_score'])} "
                     f"({_fmt(result['fcn_score_pct_of_target'], '.1f')} % of target val), style "
                     f"gap closed {_fmt(result['style']['style_gap_closed'], '.3f')}", *written]))
    return result
