"""`uda train`: resolve the run directory, build everything, fit, evaluate the final weights.

Run directory contents: config.yaml (resolved), checkpoints/{last,best}.ckpt, logs/ (CSV
metrics), results.json (final-weights evaluation on target val; schema in uda.metrics.report,
plus "checkpoint": "last", "step": int).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl

from uda import build
from uda.checkpointing import AtomicCheckpoint
from uda.config import Config, resolve_run_dir, to_yaml
from uda.io import write_json_atomic, write_text_atomic
from uda.metrics.report import format_table


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


def train(cfg: Config) -> dict:
    run_dir = resolve_run_dir(cfg)
    config_yaml = to_yaml(cfg)
    if _is_rank_zero():
        print(f"uda: run directory {run_dir}\n--- resolved config ---\n{config_yaml}---", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", config_yaml)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build.build_datamodule(cfg)
    module = build.build_module(cfg)
    ckpt = AtomicCheckpoint(run_dir / "checkpoints", config_yaml)
    trainer = build.build_trainer(cfg, run_dir, [ckpt],
                                  getattr(module, "optimizer_steps_per_iteration", 1))
    trainer.fit(module, datamodule=datamodule)
    if module.last_results is None or module.last_results_step != module.iteration:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    results = dict(module.last_results, checkpoint="last", step=module.last_results_step,
                   iterations=cfg.trainer.max_steps)
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "results.json", results)
        print(format_table(results))
        print(f"target mIoU (final weights, {cfg.data.target.dataset} "
              f"{cfg.data.target_val_split}, {results['num_images']} images): "
              f"{results['mIoU']:.2f}", flush=True)
        print(f"results: {run_dir / 'results.json'}")
    return results
