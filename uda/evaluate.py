"""`uda evaluate` and `uda predict`: a trained checkpoint applied to target val or to files.

The configuration comes from the checkpoint (`checkpoint["uda"]["config"]`, the run's resolved
YAML), optionally overridden by `--config FILE` and `key=value`. Checkpoints are read by
`uda.checkpoint_io` (`torch.load(weights_only=True)`: no code from a checkpoint file is ever
executed).
"""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from tqdm import tqdm

from datamodules.datamodule import UDADataModule
from datamodules.io import DatasetError, read_rgb
from datamodules.transforms import transform_from_config
from uda import build
from uda.checkpoint_io import config_for, read_checkpoint
from uda.config import ConfigError
from uda.evaluation.export import FORMATS, write_prediction
from uda.evaluation.inference import predict_labels
from uda.reporting import ResultsReport


def evaluate(checkpoint, config_file=None, overrides=None, output=None, export=None) -> dict:
    ckpt = read_checkpoint(checkpoint)
    cfg = config_for(ckpt, checkpoint, config_file, overrides)
    module = build.load_module(ckpt, cfg, checkpoint)
    if export:
        module.export_dir = Path(export)
    d = cfg.data
    val = build.build_dataset(d.target, d.target_val_split,
                              transform_from_config(d.eval_transform, train=False), labelled=True)
    dm = UDADataModule(None, None, val, val_batch_size=d.val_batch_size,
                       num_workers=d.num_workers, pin_memory=d.pin_memory, seed=cfg.seed)
    t = cfg.trainer
    # the checkpoint's iteration: results say which weights they score
    extra = {"checkpoint": str(checkpoint),
             "step": (ckpt.get("uda") or {}).get("step", ckpt.get("global_step"))}
    note = (f"predictions written to {export}/labelIds (official-evaluator ready) and "
            f"{export}/color") if export else None
    report = ResultsReport(f"{checkpoint}, {d.target.dataset} {d.target_val_split}", output,
                           extra, note=note)
    trainer = pl.Trainer(accelerator=t.accelerator, devices=t.devices,
                         strategy=build.build_strategy(cfg),  # as training: auto/ddp* with >1 device
                         num_nodes=t.num_nodes, precision=t.precision, logger=False,
                         enable_progress_bar=t.progress_bar, enable_model_summary=False,
                         use_distributed_sampler=False, callbacks=[report])
    trainer.validate(module, datamodule=dm, verbose=False)
    return dict(module.last_results, **extra) if module.last_results else None


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
    transform = transform_from_config(cfg.data.eval_transform, train=False)
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
