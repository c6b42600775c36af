"""What a command shows on the terminal.

* `quiet_library_noise()`: filters a few exact library messages that are adverts or mislead
  (each one named below, with the reason). Nothing else is filtered: other warnings, ours
  included, still show. Imports neither torch nor Lightning (logging filters attach to loggers
  by name, warning filters match by message), so the CLI installs it before any command runs.
* `write(text)`: print `text` starting on its own line, also while tqdm progress bars (Lightning's)
  are drawn on stdout.
"""
from __future__ import annotations

import logging
import re
import sys
import warnings

# Lightning's rank-zero info lines (logging records, not warnings) that say nothing about the run.
NOISE_LINES = (
    r"💡 Tip: ",                            # litlogger / litmodels adverts
    r"(GPU|TPU|HPU) available: ",           # the run's devices are in uda's start summary
    r"LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES: ",
    r"`Trainer\.fit` stopped: `max_steps=",  # the end of a run is uda's own last line
    r"`Trainer\(val_check_interval=1\)` was configured",  # trainer.val_every=1: in the summary
    r"Restor(ing|ed all) states from the checkpoint",  # said by "uda: resuming from ..."
)
# Where Lightning logs them: rank_zero_info goes through whichever of the first three loggers the
# last imported Lightning package installed; the LOCAL_RANK line comes from the CUDA accelerator.
NOISE_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                 "lightning_utilities.core.rank_zero", "pytorch_lightning.accelerators.cuda",
                 "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda")

NOISE_WARNINGS = (
    # torch >= 2.9 deprecates building `LeafSpec()`, which Lightning's own _pytree helper does at
    # every batch; nothing a user of uda can change.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # Emitted whenever a LightningModule that defines `on_after_batch_transfer` is fitted with a
    # LightningDataModule that does not: it says the module's hook runs, which is the design
    # (SegmentationModule's hook calls the datamodule's `augment`; see UDADataModule.augment).
    (r"You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a "
     r"`LightningDataModule`", UserWarning),
    # Counts every module in eval mode when training starts, including those frozen by design
    # (frozen BatchNorm with model.freeze_bn, DRANet's perceptual network). SegmentationModule
    # warns instead, naming only modules that its train() would switch to training.
    (r"Found \d+ module\(s\) in eval mode at the start of training\.", UserWarning),
    # With several processes, one per logged key at each validation: "use sync_dist=True". Our
    # validation metrics are computed once, on rank 0, from the confusion matrix summed over all
    # ranks (or, for val_translation/, from rank 0's own translations) and logged with
    # rank_zero_only=True: there is nothing to synchronise, and a collective there would hang.
    (r"It is recommended to use `self\.log\('val(_iou|_translation)?/", UserWarning),
)


class _DropLines(logging.Filter):
    """Drops the log records whose message starts with one of `NOISE_LINES`."""

    pattern = re.compile("|".join(f"(?:{p})" for p in NOISE_LINES))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


_DROP = _DropLines()


def quiet_library_noise() -> None:
    """Install the filters (idempotent)."""
    for name in NOISE_LOGGERS:
        logger = logging.getLogger(name)
        if _DROP not in logger.filters:
            logger.addFilter(_DROP)
    for message, category in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def write(text: str) -> None:
    """Print `text` on stdout starting at the beginning of a line: active tqdm bars are cleared
    first and drawn again below it. When stdout is not a terminal (a log file), the cleared bar
    stays on its line (`\\r` only), so a newline is written first."""
    tqdm = sys.modules.get("tqdm")
    bars = getattr(getattr(tqdm, "tqdm", None), "_instances", None) if tqdm else None
    if not bars:
        print(text, flush=True)
        return
    with tqdm.tqdm.external_write_mode(file=sys.stdout):
        prefix = "" if sys.stdout.isatty() else "\n"
        sys.stdout.write(f"{prefix}{text}\n")
        sys.stdout.flush()
