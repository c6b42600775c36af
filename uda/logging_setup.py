"""Experiment loggers (W&B, CSV, TensorBoard), image panels and the per-class IoU table.

* `resolve_wandb_mode(mode)`: "auto" -> "online" when W&B credentials are configured, else
  "offline". Pure standard library: wandb is not imported and nothing is sent anywhere.
* `build_logger(kind, run_dir, ...)`: a Lightning logger, or False for kind="none". For
  kind="wandb" every W&B directory is redirected under `run_dir/wandb` (`wandb_env`) and the run
  is created at once on rank 0, so any failure (no network, bad credentials, wandb missing)
  happens here and falls back to a CSVLogger with a warning: training never stops because of
  W&B. Offline runs print the `wandb sync <dir>` command that uploads them later.
* `PanelLogger`: a callback logging image panels (W&B images, TensorBoard images, or PNG files
  under `run_dir/panels/<key>/step<N>.png` for loggers without an image API).
* `log_iou_table(logger, results, step)`: per-class IoU as a W&B table, else as scalars.

Ranks: only rank 0 creates a W&B run. On other ranks `build_logger` returns a WandbLogger in
mode "disabled" whose run is never created: Lightning's `WandbLogger.experiment` is wrapped by
`rank_zero_experiment` (a do-nothing `DummyExperiment` when `rank_zero_only.rank != 0`) and
`log_metrics` / `log_image` / `log_table` / `log_hyperparams` are `rank_zero_only`, so nothing
is logged or created there; "disabled" also covers a caller whose rank differs from Lightning's.
"""
from __future__ import annotations

import configparser
import logging
import netrc
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.loggers.wandb import WandbLogger as _WandbLogger  # isinstance checks only
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from datamodules.io import write_png_atomic
from uda.evaluation.export import overlay

log = logging.getLogger(__name__)

KINDS = ("wandb", "csv", "tensorboard", "none")
WANDB_MODES = ("auto", "online", "offline", "disabled")
DEFAULT_WANDB_URL = "https://api.wandb.ai"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------
# W&B mode and directories
# ----------------------------------------------------------------------------------------------

def _wandb_settings_file() -> Path:
    """The global settings file wandb reads: $WANDB_CONFIG_DIR/settings or ~/.config/wandb."""
    config_dir = os.environ.get("WANDB_CONFIG_DIR")
    base = Path(config_dir).expanduser() if config_dir else Path("~/.config/wandb").expanduser()
    return base / "settings"


def _read_wandb_settings() -> dict[str, str]:
    """The `[default]` section of the global settings file ({} if absent or unreadable)."""
    parser = configparser.ConfigParser()
    try:
        parser.read(_wandb_settings_file())
    except (configparser.Error, OSError, UnicodeDecodeError):
        return {}
    return dict(parser["default"]) if parser.has_section("default") else {}


def _netrc_has_key(base_url: str) -> bool:
    """True when the netrc file wandb uses ($NETRC, ~/.netrc, ~/_netrc) has a password for the
    host of `base_url`."""
    host = urlsplit(base_url).netloc
    if os.environ.get("NETRC"):
        candidates = [Path(os.environ["NETRC"]).expanduser()]
    else:
        candidates = [Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()]
    for path in candidates:
        if path.is_file():
            try:
                creds = netrc.netrc(str(path)).authenticators(host)
            except (netrc.NetrcParseError, OSError):
                return False
            return bool(creds and creds[2])
    return False


def resolve_wandb_mode(mode: str) -> str:
    """"online" | "offline" | "disabled" for `mode` in WANDB_MODES.

    Explicit modes are returned as is. "auto": an explicit WANDB_MODE environment variable wins
    (offline/dryrun -> "offline", online, disabled; e.g. the test suite sets offline); otherwise
    "online" when credentials are found where wandb 0.31 looks for them (WANDB_API_KEY,
    WANDB_IDENTITY_TOKEN_FILE, a netrc entry for the host of WANDB_BASE_URL / the settings
    `base_url` / api.wandb.ai, or `api_key` in the global settings file), else "offline".
    Nothing is validated against a server.
    """
    if mode not in WANDB_MODES:
        raise ValueError(f"wandb mode must be one of {WANDB_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode in ("offline", "dryrun"):
        return "offline"
    if env_mode in ("online", "disabled"):
        return env_mode
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return "online"
    settings = _read_wandb_settings()
    base_url = os.environ.get("WANDB_BASE_URL") or settings.get("base_url") or DEFAULT_WANDB_URL
    if _netrc_has_key(base_url) or settings.get("api_key"):
        return "online"
    return "offline"


def wandb_env(run_dir: Path) -> dict[str, str]:
    """Environment variables putting every W&B directory under `run_dir/wandb`.

    Runs go to `run_dir/wandb/{offline-,}run-*` (WANDB_DIR=run_dir), plus `cache/` (core logs),
    `data/` and `artifacts/` (artifact staging) and `config/` (global settings). The user's
    global settings are copied to `config/settings` without secrets (so a custom `base_url`
    still applies); if they hold an `api_key` the config dir is left where it is, since wandb
    only reads it during a run.
    """
    root = Path(run_dir).resolve() / "wandb"
    env = {"WANDB_DIR": str(root.parent), "WANDB_CACHE_DIR": str(root / "cache"),
           "WANDB_DATA_DIR": str(root / "data"), "WANDB_ARTIFACT_DIR": str(root / "artifacts")}
    settings = _read_wandb_settings()
    if "api_key" not in settings:
        env["WANDB_CONFIG_DIR"] = str(root / "config")
        if settings:
            (root / "config").mkdir(parents=True, exist_ok=True)
            parser = configparser.ConfigParser()
            parser["default"] = settings
            tmp = root / "config" / f".settings.{os.getpid()}.tmp"  # ranks may write at once
            with open(tmp, "w") as f:
                parser.write(f)
            os.replace(tmp, root / "config" / "settings")
    return env


def offline_run_dir(logger) -> Path | None:
    """The directory of the logger's offline W&B run (what `wandb sync` takes), else None."""
    if not isinstance(logger, _WandbLogger) or logger._experiment is None:
        return None
    run = logger._experiment
    if getattr(getattr(run, "settings", None), "mode", None) not in ("offline", "dryrun"):
        return None
    return Path(run.dir).parent  # run.dir is <...>/offline-run-<time>-<id>/files


# ----------------------------------------------------------------------------------------------
# Loggers
# ----------------------------------------------------------------------------------------------

def _csv_logger(run_dir: Path) -> CSVLogger:
    return CSVLogger(save_dir=str(run_dir), name="logs", version="")  # run_dir/logs/metrics.csv


def build_logger(kind: str, run_dir: Path, *, project: str, name: str | None = None,
                 group: str | None = None, tags: Iterable[str] = (), mode: str = "auto",
                 config: Mapping[str, Any] | None = None, log_checkpoints: bool = False,
                 is_rank_zero: bool = True, run_id: str | None = None):
    """A Lightning logger for `kind` in KINDS, or False for "none".

    csv -> `run_dir/logs/metrics.csv`; tensorboard -> `run_dir/tensorboard/` (`config` as
    hparams); wandb -> WandbLogger(save_dir=run_dir, mode=resolve_wandb_mode(mode)) with `config`
    (a plain JSON-able dict) as the run config, `log_model=log_checkpoints` (it only acts on
    Lightning ModelCheckpoint callbacks), `run_id` to resume a run. Sets the `wandb_env`
    variables in os.environ (all ranks). On rank 0 the run is created here; if that raises for
    any reason a warning is issued and a CSVLogger (as for kind="csv") is returned instead.
    """
    if kind not in KINDS:
        raise ValueError(f"logger kind must be one of {KINDS}, got {kind!r}")
    run_dir = Path(run_dir)
    if kind == "none":
        return False
    if kind == "csv":
        return _csv_logger(run_dir)
    if kind == "tensorboard":
        logger = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="",
                                   default_hp_metric=False)
        if config and is_rank_zero:
            logger.log_hyperparams(dict(config))
        return logger
    resolved = resolve_wandb_mode(mode) if is_rank_zero else "disabled"
    try:
        if is_rank_zero:
            _reset_wandb_session()
        os.environ.update(wandb_env(run_dir))
        logger = pl.loggers.WandbLogger(  # looked up at call time (tests patch it)
            save_dir=str(run_dir), project=project, name=name, group=group, tags=list(tags),
            mode=resolved, config=dict(config or {}), log_model=bool(log_checkpoints), id=run_id)
        if is_rank_zero:
            _ = logger.experiment  # create the run now: fail here, not in the middle of training
    except Exception as e:  # noqa: BLE001 - W&B must never stop training
        msg = (f"W&B logger unavailable ({type(e).__name__}: {e}); logging to CSV in "
               f"{run_dir / 'logs'} instead")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        log.info(msg)
        try:  # stop a half-started W&B session (its service process)
            _reset_wandb_session()
        except Exception:  # noqa: BLE001
            pass
        return _csv_logger(run_dir)
    path = offline_run_dir(logger)
    if path is not None:
        hint = (f"uda: W&B is offline; run saved in {path}\n"
                f"  upload it later with: wandb sync {path}")
        print(hint, flush=True)
        log.info(hint)
    return logger


def _reset_wandb_session() -> None:
    """Finish a W&B run left open in this process and tear the W&B session down, so the next
    run is a new run and reads the WANDB_* variables again (wandb ignores changes to them once
    its session has started). A no-op when wandb was never imported."""
    wandb = sys.modules.get("wandb")
    if wandb is None:
        return
    if wandb.run is not None:
        warnings.warn(f"a W&B run was still open ({wandb.run.dir}); finishing it before starting "
                      "a new one (call close_logger(logger) at the end of training)",
                      RuntimeWarning, stacklevel=3)
        wandb.finish()
    wandb.teardown()


def close_logger(logger, exit_code: int = 0) -> None:
    """End of training: finish the W&B run of a WandbLogger (flushes it and prints the sync
    command when offline); flush (`save`) any other logger. Accepts a logger, a list of loggers
    or False/None. Lightning does not finish W&B runs itself."""
    for lg in _as_loggers(logger):
        if isinstance(lg, _WandbLogger):
            run = lg._experiment
            if run is not None and hasattr(run, "finish"):
                run.finish(exit_code=exit_code)
        else:
            lg.save()


# ----------------------------------------------------------------------------------------------
# Per-class IoU
# ----------------------------------------------------------------------------------------------

def _as_loggers(logger) -> list:
    if not logger:
        return []
    return list(logger) if isinstance(logger, (list, tuple)) else [logger]


def log_iou_table(logger, results: Mapping[str, Any], step: int) -> None:
    """Log `results["per_class_iou"]` ({class: IoU | None}) for a logger, a list of loggers
    (e.g. `trainer.loggers`) or False/None (nothing). WandbLogger: a table "val/per_class_iou"
    with columns (class, IoU), None kept as an empty cell. Other loggers: scalars
    `val_iou/<class>` at `step`, None skipped. Rank 0 only."""
    if rank_zero_only.rank != 0:
        return
    per_class = dict(results.get("per_class_iou") or {})
    for lg in _as_loggers(logger):
        if isinstance(lg, _WandbLogger):
            data = [[name, None if v is None else float(v)] for name, v in per_class.items()]
            lg.log_table(key="val/per_class_iou", columns=["class", "IoU"], data=data, step=step)
        else:
            metrics = {f"val_iou/{n}": float(v) for n, v in per_class.items() if v is not None}
            if metrics:
                lg.log_metrics(metrics, step=step)
                lg.save()


# ----------------------------------------------------------------------------------------------
# Image panels
# ----------------------------------------------------------------------------------------------

def _to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(B,3,H,W) float in [0,1] (clamped) -> B arrays (H,W,3) uint8."""
    arr = (images.detach().float().clamp(0, 1) * 255.0).round().byte()
    return list(arr.permute(0, 2, 3, 1).cpu().numpy())


def _display_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _shrink(images: torch.Tensor, max_side: int) -> torch.Tensor:
    size = _display_size(*images.shape[-2:], max_side)
    if size == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False,
                         antialias=True)


def _grid(images: list[np.ndarray]) -> np.ndarray:
    """Stack (H,W,3) uint8 images vertically, one row each, padded right with black."""
    width = max(im.shape[1] for im in images)
    rows = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0))) for im in images]
    return np.concatenate(rows, axis=0)


def _safe_key(key: str) -> str:
    return re.sub(r"[^\w.-]+", "_", key).strip("_") or "panel"


class PanelLogger(pl.Callback):
    """Log image panels to the trainer's loggers (rank 0 only).

    Training: every `every_n_steps` iterations (`pl_module.iteration` if present, else
    global_step; <= 0 disables) calls `pl_module.panel_images(batch)` on the training batch if
    the module defines it; the returned {key: (B,3,H,W) float in [0,1]} gives the panels
    "panels/<key>" (first `max_images`). It runs under no_grad with every submodule in eval mode,
    each module's train/eval flag restored afterwards.
    Validation: once per validation (first batch of the first loader), with
    `pl_module.predict_labels(images, mask size)`, the panel "panels/val_prediction": one row per
    image [input | prediction overlay | ground-truth overlay] in the Cityscapes palette, images
    denormalised with `mean`/`std`.
    Panels are shrunk so no side exceeds `max_side`. WandbLogger: `log_image` (a list of images,
    captions from batch["name"]); TensorBoardLogger: `add_images`; any other logger: one PNG
    `run_dir/panels/<key>/step<N>.png` (default run_dir: trainer.default_root_dir). A failure
    only warns.
    """

    def __init__(self, every_n_steps: int, max_images: int = 4, *, run_dir: Path | None = None,
                 mean: Iterable[float] = IMAGENET_MEAN, std: Iterable[float] = IMAGENET_STD,
                 alpha: float = 0.5, max_side: int = 512):
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self.every_n_steps = int(every_n_steps)
        self.max_images = int(max_images)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.mean = torch.tensor(tuple(mean), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(tuple(std), dtype=torch.float32).view(1, 3, 1, 1)
        self.alpha = alpha
        self.max_side = int(max_side)
        self._last_train_step = -1

    @staticmethod
    def _step(trainer, pl_module) -> int:
        return int(getattr(pl_module, "iteration", trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = self._step(trainer, pl_module)
        if (self.every_n_steps <= 0 or step % self.every_n_steps or step == self._last_train_step
                or not trainer.is_global_zero or not hasattr(pl_module, "panel_images")):
            return
        self._last_train_step = step
        try:
            modes = {m: m.training for m in pl_module.modules()}
            pl_module.eval()
            try:
                with torch.no_grad():
                    panels = pl_module.panel_images(batch)
            finally:
                for m, flag in modes.items():
                    m.training = flag
            for key, images in panels.items():
                rows = _to_uint8(_shrink(images[: self.max_images], self.max_side))
                self.log_panel(trainer, key, rows, step)
        except Exception as e:  # noqa: BLE001 - panels are never worth stopping training
            warnings.warn(f"PanelLogger: training panels at step {step} failed: {e!r}")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        if (batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking
                or not trainer.is_global_zero or not hasattr(pl_module, "predict_labels")):
            return
        step = self._step(trainer, pl_module)
        try:
            rows = self.prediction_rows(pl_module, batch)
            captions = [str(n) for n in batch.get("name", [])][: len(rows)]
            self.log_panel(trainer, "val_prediction", rows, step,
                           captions if len(captions) == len(rows) else None)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"PanelLogger: validation panel at step {step} failed: {e!r}")

    def prediction_rows(self, pl_module, batch) -> list[np.ndarray]:
        """[input | prediction overlay | ground-truth overlay] rows (H,3W,3) uint8."""
        images = batch["image"][: self.max_images]
        masks = batch["mask"][: self.max_images]
        with torch.no_grad():
            pred = pl_module.predict_labels(images, tuple(masks.shape[-2:]))
        size = _display_size(*masks.shape[-2:], self.max_side)
        rgb = images.detach().float().cpu() * self.std + self.mean
        rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=True)

        def labels(t: torch.Tensor) -> np.ndarray:
            t = F.interpolate(t[:, None].float().cpu(), size=size, mode="nearest")[:, 0]
            return t.long().numpy()

        rows = []
        for im, p, g in zip(_to_uint8(rgb), labels(pred), labels(masks)):
            rows.append(np.concatenate([im, overlay(im, p, self.alpha),
                                        overlay(im, g, self.alpha)], axis=1))
        return rows

    def log_panel(self, trainer, key: str, images: list[np.ndarray], step: int,
                  captions: list[str] | None = None) -> None:
        """Send (H,W,3) uint8 images as panel `key` to every logger of the trainer."""
        png_written = False
        for lg in trainer.loggers:
            if isinstance(lg, _WandbLogger):
                extra = {"caption": captions} if captions else {}
                lg.log_image(key=f"panels/{key}", images=list(images), step=step, **extra)
            elif isinstance(lg, TensorBoardLogger):
                same = len({im.shape for im in images}) == 1
                batch = np.stack(images) if same else _grid(images)[None]
                lg.experiment.add_images(f"panels/{key}", batch, global_step=step,
                                         dataformats="NHWC")
            elif not png_written:
                root = self.run_dir or Path(trainer.default_root_dir)
                path = root / "panels" / _safe_key(key) / f"step{step}.png"
                write_png_atomic(Image.fromarray(_grid(images)), path)
                png_written = True
