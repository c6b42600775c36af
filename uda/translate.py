"""`uda translate`: write a source dataset rendered in the target style by a trained DRANet,
in the source's own layout (relative paths kept) with the original label files copied, so any
segmenter can train on it (two-stage use). `--score` measures the translation instead of (or as
well as) writing it: see `uda.translation_quality`.

Style bank: `num_styles` target-train frames (eval transform size) are encoded once; each source
frame takes its CADT-mixed style over the bank (temperature from the run's config). Frames are
translated at full resolution (padded to a multiple of the translator's stride, then cropped),
on the GPU when there is one.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from datamodules.image_io import write_png_atomic
from uda import build
from uda.checkpoint_io import config_for, read_checkpoint
from uda.config import Config, ConfigError
from uda.methods import method
from uda.modules.dranet import DRANet


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_translator(checkpoint, config_file=None, overrides=None,
                    device: torch.device | None = None) -> tuple[DRANet, Config]:
    """The DRANet module of a checkpoint (eval mode, on `device`) and its config; ConfigError
    when the checkpoint is not a DRANet run's."""
    ckpt = read_checkpoint(checkpoint)
    cfg = config_for(ckpt, checkpoint, config_file, overrides)
    if not method(cfg.method.name).translator:
        raise ConfigError(f"{checkpoint}: method '{cfg.method.name}' has no translator; "
                          "translate needs a DRANet checkpoint")
    module = build.load_module(ckpt, cfg, checkpoint)
    return module.to(device or default_device()).eval(), cfg


@torch.no_grad()
def style_bank(module: DRANet, target_ds, num_styles: int, seed: int = 0):
    """(content, style) of `num_styles` target frames, chosen reproducibly."""
    idx = np.random.default_rng(seed).permutation(len(target_ds))[:num_styles]
    x = torch.stack([target_ds[int(i)]["image"] for i in idx]).to(module.device)
    return module.translator.encode(module.to_unit(x), "target")


def target_style_bank(module: DRANet, cfg: Config, num_styles: int):
    """The style bank over the run's target-train split (eval transform size)."""
    return style_bank(module, build.build_style_frames(cfg), num_styles, cfg.seed)


@torch.no_grad()
def translate_unit(module: DRANet, u: torch.Tensor, bank) -> torch.Tensor:
    """(B,3,H,W) source images in [-1, 1] -> translated (B,3,H,W) in [-1, 1]."""
    h, w = u.shape[-2:]
    u = module.translator.pad(u)
    content, own = module.translator.encode(u, "source")
    attn = module.translator.attention(content, bank[0], module.temperature)
    out, _ = module.translator.transfer(content, bank[1], attn, u, own, ("source", "target"))
    return out[..., :h, :w]


@torch.no_grad()
def translate_frame(module: DRANet, x: torch.Tensor, bank) -> torch.Tensor:
    """(1,3,H,W) dataset-normalised source frame -> (1,3,H,W) uint8-ready [0, 1] RGB."""
    x = x.to(module.device)
    return ((translate_unit(module, module.to_unit(x), bank) + 1.0) / 2.0).clamp(0, 1)


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """(3,H,W) RGB in [0, 1] -> HxWx3 uint8, rounded as the written PNGs are."""
    return (rgb.detach().float().cpu().permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def write_translations(module: DRANet, bank, source, input_root, output) -> int:
    """Translate every frame of `source` (see `uda.build.build_source_at`) into `output`, same
    layout, label files copied byte for byte."""
    output, root = Path(output), Path(input_root)
    for i, sample in enumerate(tqdm(source.samples, desc="translate", unit="img")):
        x = source[i]["image"][None]
        rgb = to_uint8(translate_frame(module, x, bank)[0])
        rel = sample.image.relative_to(root).with_suffix(".png")
        write_png_atomic(Image.fromarray(rgb), output / rel)
        if sample.label is not None:
            dst = output / sample.label.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(sample.label, dst)
    return len(source)


def translate(checkpoint, input_root, output, num_styles: int = 16, config_file=None,
              overrides=None) -> int:
    module, cfg = load_translator(checkpoint, config_file, overrides)
    bank = target_style_bank(module, cfg, num_styles)
    return write_translations(module, bank, build.build_source_at(cfg, input_root), input_root,
                              output)
