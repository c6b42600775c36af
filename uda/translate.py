"""`uda translate`: write a source dataset rendered in the target style by a trained DRANet,
in the source's own layout (relative paths kept) with the original label files copied, so any
segmenter can train on it (two-stage use).

Style bank: `num_styles` target-train frames (eval transform size) are encoded once; each source
frame takes its CADT-mixed style over the bank (temperature from the run's config). Frames are
translated at full resolution (padded to a multiple of the translator's stride, then cropped).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from datamodules.datasets import DATASETS
from datamodules.io import write_png_atomic
from datamodules.transforms import build_transform, transform_from_config
from uda import build
from uda.config import ConfigError
from uda.evaluate import config_for, load_module, read_checkpoint
from uda.modules.dranet import DRANet


@torch.no_grad()
def style_bank(module: DRANet, target_ds, num_styles: int, seed: int = 0):
    """(content, style) of `num_styles` target frames, chosen reproducibly."""
    idx = np.random.default_rng(seed).permutation(len(target_ds))[:num_styles]
    u = torch.stack([module.to_unit(target_ds[int(i)]["image"][None])[0] for i in idx])
    return module.translator.encode(u, "target")


@torch.no_grad()
def translate_frame(module: DRANet, x: torch.Tensor, bank) -> torch.Tensor:
    """(1,3,H,W) dataset-normalised source frame -> (1,3,H,W) uint8-ready [0, 1] RGB."""
    h, w = x.shape[-2:]
    u = module.translator.pad(module.to_unit(x))
    content, _ = module.translator.encode(u, "source")
    attn = module.translator.attention(content, bank[0], module.temperature)
    out, _ = module.translator.transfer(content, bank[1], attn)
    return ((out[..., :h, :w] + 1.0) / 2.0).clamp(0, 1)


def translate(checkpoint, input_root, output, num_styles: int = 16, config_file=None,
              overrides=None) -> int:
    ckpt = read_checkpoint(checkpoint)
    cfg = config_for(ckpt, checkpoint, config_file, overrides)
    if cfg.method.name != "dranet":
        raise ConfigError(f"{checkpoint}: method '{cfg.method.name}' has no translator; "
                          "translate needs a DRANet checkpoint")
    module = load_module(ckpt, cfg, checkpoint)
    d = cfg.data
    target = build.build_dataset(d.target, d.target.split,
                                 transform_from_config(d.eval_transform, train=False),
                                 labelled=False)
    bank = style_bank(module, target, num_styles, cfg.seed)
    t = d.source_transform
    source = DATASETS[d.source.dataset](input_root, d.source.split, labelled=False,
                                        transform=build_transform(mean=t.mean, std=t.std))
    output, root = Path(output), Path(input_root)
    for i, sample in enumerate(tqdm(source.samples, desc="translate", unit="img")):
        x = source[i]["image"][None]
        rgb = translate_frame(module, x, bank)[0].permute(1, 2, 0).numpy()
        rel = sample.image.relative_to(root).with_suffix(".png")
        write_png_atomic(Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8)), output / rel)
        if sample.label is not None:
            dst = output / sample.label.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(sample.label, dst)
    return len(source)
