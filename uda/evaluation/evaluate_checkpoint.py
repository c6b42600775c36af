"""`uda evaluate`: a trained checkpoint scored on target val (optionally exporting its
predictions).

The configuration comes from the checkpoint (`checkpoint["uda"]["config"]`, the run's resolved
YAML), optionally overridden by `--config FILE` and `key=value`. Checkpoints are read by
`uda.checkpoint_io` (`torch.load(weights_only=True)`: no code from a checkpoint file is ever
executed). The module, datamodule and Trainer come from `uda.build`.
"""
from __future__ import annotations

from pathlib import Path

from uda import build
from uda.checkpoint_io import config_for, read_checkpoint
from uda.results_callback import ResultsReport


def evaluate(checkpoint, config_file=None, overrides=None, output=None, export=None) -> dict:
    ckpt = read_checkpoint(checkpoint)
    cfg = config_for(ckpt, checkpoint, config_file, overrides)
    module = build.load_module(ckpt, cfg, checkpoint)
    if export:
        module.export_dir = Path(export)
    dm = build.build_eval_datamodule(cfg)
    # the checkpoint's iteration: results say which weights they score
    extra = {"checkpoint": str(checkpoint),
             "step": (ckpt.get("uda") or {}).get("step", ckpt.get("global_step"))}
    note = (f"predictions written to {export}/labelIds (official-evaluator ready) and "
            f"{export}/color") if export else None
    report = ResultsReport(f"{checkpoint}, {cfg.data.target.dataset} {cfg.data.target_val_split}",
                           output, extra, note=note)
    trainer = build.build_eval_trainer(cfg, callbacks=[report])
    trainer.validate(module, datamodule=dm, verbose=False)
    return dict(module.last_results, **extra) if module.last_results else None
