"""`uda train`: resolve the run directory, build everything, fit, evaluate the final weights.

Run directory contents: config.yaml (resolved), checkpoints/{last,best}.ckpt, logs/ (CSV
metrics), results.json (final-weights evaluation on target val; schema in uda.metrics.results,
plus "step" (iterations) and "checkpoint": "last").

Runs are append-only: an unwritable run.dir, or without `resume` a directory holding an
earlier run, is refused before anything is written (`uda.output_paths`, `uda.run_guard`); a
resume is checked (kind of run, iteration, weight shapes) before anything is written,
config.yaml is rewritten only once the checkpoint has been loaded, and logs/metrics.csv is
appended to. A run that fails before its first checkpoint removes what it created
(`uda.run_guard.StartGuard`), except after a NaN/Inf loss or model state: that stops the run
naming the last good checkpoint, or saying that none exists (`uda.nonfinite`), and keeps the
logs of the divergence.

Multi-process runs: every rank runs this function (torchrun/SLURM start N copies; Lightning's
own launcher re-executes the command). They agree on the run directory through `UDA_RUN_DIR`
(exported by rank 0 before the launcher starts the others, or by the launch scripts), else
the job id of torchrun/SLURM; only rank 0 writes config.yaml and results.json.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from uda import build, logging_setup, translation_callback
from uda.callbacks import GracefulStop, WriteOnTrainStart
from uda.checkpointing import AtomicCheckpoint
from uda.config import Config, ConfigError, resolve_run_dir, to_yaml
from uda.errors import raised_in_rank
from uda.nonfinite import (ADVICE, NonFiniteError, NonFiniteLossError, NonFiniteStateError,
                           last_good_checkpoint)
from uda.output_paths import check_run_dir
from uda.results_callback import ResultsReport
from uda.run_guard import StartGuard, refuse_overwrite
from uda.run_summary import end_summary, start_summary

EXIT_INTERRUPTED = 3  # exit code of `uda train`/`uda benchmark` stopped by SIGINT/SIGTERM/SIGUSR1


class Interrupted(Exception):
    """A run stopped by a signal, last.ckpt written (`uda benchmark` raises it; the CLI exits
    with EXIT_INTERRUPTED)."""


def shared_run_dir(cfg: Config) -> Path:
    """The run directory, identical on every rank of a job (and across SLURM requeues)."""
    if not cfg.run.dir and os.environ.get("UDA_RUN_DIR"):
        cfg.run.dir = os.environ["UDA_RUN_DIR"]
    job = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("SLURM_JOB_ID")
    if not cfg.run.dir and job and job != "none":
        cfg.run.dir = str(Path("runs") / cfg.run.experiment / f"job-{job}")
    if not cfg.run.dir and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("multi-process launch without run.dir: set run.dir=... (or "
                          "UDA_RUN_DIR) so that all ranks write to the same directory")
    run_dir = resolve_run_dir(cfg)
    os.environ["UDA_RUN_DIR"] = str(run_dir)  # inherited by processes the launcher starts
    return run_dir


def resume_path(resume: str | None, run_dir: Path) -> Path | None:
    """`auto`: the run's last.ckpt when it exists (else start fresh); a path: that file."""
    if not resume:
        return None
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.ckpt"
        return last if last.is_file() else None
    return Path(resume)


def check_resumable(ckpt: dict, cfg: Config, path) -> int:
    """The checkpoint's iteration; a clear error when it belongs to another kind of run."""
    from omegaconf import OmegaConf
    saved = OmegaConf.create((ckpt.get("uda") or {}).get("config") or "{}")
    for key in ("method.name", "model.name", "data.source.dataset", "data.target.dataset"):
        old, new = OmegaConf.select(saved, key), OmegaConf.select(cfg, key)
        if old is not None and old != new:
            raise ConfigError(f"{path}: cannot resume: checkpoint has {key}={old!r}, the config "
                              f"{key}={new!r}")
    step = int((ckpt.get("uda") or {}).get("step", 0))
    if step >= cfg.trainer.max_steps:
        raise ConfigError(f"{path}: already at iteration {step} >= trainer.max_steps="
                          f"{cfg.trainer.max_steps}; raise trainer.max_steps to continue")
    return step


def check_weights_match(state: dict, module, path) -> None:
    """A clear error when a checkpoint tensor has another shape than in the model this config
    builds (e.g. another model.width); Lightning would fail later, after files were written."""
    own = module.state_dict()
    for key, saved in state.items():
        if key in own and hasattr(saved, "shape") and tuple(saved.shape) != tuple(own[key].shape):
            raise ConfigError(f"{path}: cannot resume: {key} has shape {tuple(saved.shape)} in the "
                              f"checkpoint but {tuple(own[key].shape)} with this config; resume "
                              "with the run's model settings (its config.yaml, e.g. model.width) "
                              "or start a new run with another run.dir=...")


def requeue_if_slurm(signum) -> None:
    """SLURM sends SIGUSR1 before the time limit (sbatch --signal=USR1@90): requeue the job,
    whose script runs `uda train ... --resume auto` again. Rank 0 only; failures are reported."""
    if signum != signal.SIGUSR1 or "SLURM_JOB_ID" not in os.environ or rank_zero_only.rank != 0:
        return
    job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
    if os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    r = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    print(f"uda: scontrol requeue {job}: " + ("ok" if r.returncode == 0 else r.stderr.strip()),
          flush=True)


def train(cfg: Config, resume: str | None = None, print_config: bool = False) -> dict:
    """Train; `resume` = a checkpoint path or "auto" (the run's last.ckpt if present). Prints a
    short summary at the start (`print_config`: also the resolved config) and one line at the
    end (rank 0)."""
    if resume == "auto" and not (cfg.run.dir or os.environ.get("UDA_RUN_DIR")):
        raise ConfigError("--resume auto needs run.dir=... (the run to continue)")
    run_dir = shared_run_dir(cfg)
    if rank_zero_only.rank == 0:  # other ranks may start after rank 0 has written files
        check_run_dir(run_dir)
        refuse_overwrite(run_dir, resume)
    ckpt_path = resume_path(resume, run_dir)
    start, saved = 0, None
    if ckpt_path is not None:
        from uda.checkpoint_io import read_checkpoint
        saved = read_checkpoint(ckpt_path)
        start = check_resumable(saved, cfg, ckpt_path)
    config_yaml = to_yaml(cfg)
    if print_config and rank_zero_only.rank == 0:
        print(f"--- resolved config ---\n{config_yaml}---", flush=True)
    guard = StartGuard(run_dir) if rank_zero_only.rank == 0 else None
    try:
        return _fit(cfg, run_dir, config_yaml, ckpt_path, start, saved)
    except BaseException as e:
        error = worker_error(e)
        if isinstance(error, NonFiniteError):  # name the last good checkpoint, if there is one
            note = last_good_checkpoint(run_dir / "checkpoints")
            raise type(error)(f"{error}; {note}. {ADVICE}") from None
        if guard is not None and guard.undo():
            print(f"uda: removed what this run had created in {run_dir} (it failed before "
                  "writing a checkpoint)", flush=True)
        if error is e:
            raise
        raise error from None


def worker_error(e: BaseException) -> BaseException:
    """The uda error (NaN/Inf, configuration, dataset) that a ddp_fork/ddp_spawn rank raised,
    rebuilt from the launcher's report, so that the CLI prints it in one line with its exit
    code and the NaN/Inf note can name the last good checkpoint; any other exception as is."""
    from datamodules.image_io import DatasetError
    return raised_in_rank(e, (NonFiniteLossError, NonFiniteStateError, ConfigError, DatasetError))


def _fit(cfg: Config, run_dir: Path, config_yaml: str, ckpt_path, start: int, saved) -> dict:
    """Build data, model and trainer, fit, evaluate the final weights; the results (or
    {"interrupted": True, "step"} when stopped by a signal)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build.build_datamodule(cfg)
    datamodule.start_step = start  # the samplers continue the uninterrupted stream
    module = build.build_module(cfg)
    build.attach_style_codec(module, cfg)
    if saved is not None:
        check_weights_match(saved["state_dict"], module, ckpt_path)
        del saved  # Lightning reads the checkpoint again in fit
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    steps = cfg.trainer.max_steps
    report = ResultsReport(f"final weights, {cfg.data.target.dataset} {cfg.data.target_val_split}",
                           run_dir / "results.json", {"checkpoint": "last", "iterations": steps},
                           at_iteration=steps)
    ckpt = AtomicCheckpoint(run_dir / "checkpoints", config_yaml, cfg.run.checkpoint_every,
                            log_artifacts=cfg.logger.log_checkpoints)
    stop = GracefulStop(ckpt)
    config_file = WriteOnTrainStart(run_dir / "config.yaml", config_yaml)
    trainer = build.build_trainer(cfg, run_dir, [config_file, ckpt, report, stop],
                                  module.optimizer_steps_per_iteration,
                                  last=translation_callback.for_config(cfg))
    if rank_zero_only.rank == 0:
        loaded = getattr(module.segmenter, "load_report", None)
        print(start_summary(cfg, run_dir, datamodule, trainer, loaded and loaded.summary()),
              flush=True)
    if ckpt_path is not None and rank_zero_only.rank == 0:
        print(f"uda: resuming from {ckpt_path} at iteration {start}", flush=True)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if stop.stopped_at is None and module.last_results_step != steps:
            trainer.validate(module, datamodule=datamodule, verbose=False)  # final weights
    finally:
        logging_setup.close_logger(trainer.logger)
    if stop.stopped_at is not None:  # preempted: checkpoint written, no final evaluation
        if rank_zero_only.rank == 0:
            print(f"uda: stopped by {signal.Signals(stop.requested).name} at iteration "
                  f"{stop.stopped_at}; {run_dir / 'checkpoints' / 'last.ckpt'} written; continue "
                  f"with the same command and --resume auto (exit code {EXIT_INTERRUPTED})",
                  flush=True)
        requeue_if_slurm(stop.requested)
        return {"interrupted": True, "step": stop.stopped_at}
    results = json.loads((run_dir / "results.json").read_text())
    if rank_zero_only.rank == 0:
        print(end_summary(run_dir, results), flush=True)
    return results
