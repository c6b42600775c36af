"""Experiment loggers (W&B, CSV, TensorBoard); their media (image panels, per-class IoU table)
are in `uda.panels`.

* `resolve_wandb_mode(mode)`: "auto" -> "online" when W&B credentials are configured, else
  "offline". Pure standard library: wandb is not imported and nothing is sent anywhere.
* `create_logger(kind, run_dir, ...)`: a Lightning logger, or False for kind="none". For
  kind="wandb" every W&B directory is redirected under `run_dir/wandb` (`wandb_env`) and the run
  is created at once on rank 0, so any failure (no network, bad credentials, wandb missing)
  happens here and falls back to a CSVLogger with a warning: training never stops because of
  W&B. Offline runs print the `wandb sync <dir>` command that uploads them later.

Ranks: only rank 0 creates a W&B run. On other ranks `create_logger` returns a WandbLogger in
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
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.loggers.wandb import WandbLogger as _WandbLogger  # isinstance checks only

from uda.csv_logger import AppendingCSVLogger

log = logging.getLogger(__name__)

KINDS = ("wandb", "csv", "tensorboard", "none")
WANDB_MODES = ("auto", "online", "offline", "disabled")
DEFAULT_WANDB_URL = "https://api.wandb.ai"


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
    """run_dir/logs/metrics.csv, appended to (a resumed run keeps the earlier rows)."""
    return AppendingCSVLogger(save_dir=str(run_dir), name="logs", version="")


def create_logger(kind: str, run_dir: Path, *, project: str, name: str | None = None,
                  group: str | None = None, tags: Iterable[str] = (), mode: str = "auto",
                  config: Mapping[str, Any] | None = None, log_checkpoints: bool = False,
                  is_rank_zero: bool = True, run_id: str | None = None):
    """A Lightning logger for `kind` in KINDS, or False for "none".

    csv -> `run_dir/logs/metrics.csv` (appended to); tensorboard -> `run_dir/tensorboard/` (`config` as
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
