"""`uda predict`: a trained checkpoint applied to image files, each at its own resolution.

The configuration comes from the checkpoint, optionally overridden by `--config FILE` and
`key=value` (as for `uda evaluate`, `uda.evaluation.evaluate_checkpoint`); the module and the
transform come from `uda.build`.
"""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datamodules.image_io import DatasetError, read_rgb
from uda import build
from uda.checkpoint_io import config_for, read_checkpoint
from uda.config import ConfigError
from uda.evaluation.export import FORMATS, write_prediction
from uda.evaluation.inference import predict_labels


def expand_inputs(pattern: str) -> list[Path]:
    p = Path(pattern)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg"))
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(pattern, recursive=True))
    if not files:
        raise DatasetError(f"{pattern}: no input images (give a file, a folder or a glob)")
    return files


def predict(checkpoint, inputs: str, output, fmt: str = "color", config_file=None,
            overrides=None) -> list[Path]:
    """Predict each input image at its own resolution and write it in `fmt`."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    ckpt = read_checkpoint(checkpoint)
    cfg = config_for(ckpt, checkpoint, config_file, overrides)
    module = build.load_module(ckpt, cfg, checkpoint)
    transform = build.build_eval_transform(cfg)
    options = build.eval_options(cfg)
    written = []
    files = expand_inputs(inputs)
    for f in tqdm(files, desc="predict", unit="img"):
        try:
            image = read_rgb(f)
        except DatasetError as e:  # say what the run wrote before the bad file
            done = f"{len(written)} prediction(s) written before it ({', '.join(map(str, written[:3]))}" \
                   f"{', ...' if len(written) > 3 else ''})" if written else "nothing written"
            raise DatasetError(f"{e}; {done}") from None
        x, _ = transform(image, None)
        with torch.no_grad():
            pred = predict_labels(module.segmenter, x[None], image.shape[:2],
                                  num_classes=cfg.data.num_classes, **options)[0]
        name = f.name.rsplit(".", 1)[0].removesuffix("_leftImg8bit")
        written.append(write_prediction(pred.numpy().astype(np.uint8), output, name, fmt,
                                        image=image if fmt == "overlay" else None))
    return written
