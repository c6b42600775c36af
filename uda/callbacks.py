"""Small training callbacks used by every run (see `uda.build.build_trainer`)."""
from __future__ import annotations

import signal
import threading

import pytorch_lightning as pl
import torch.distributed as dist
from pytorch_lightning.callbacks import TQDMProgressBar

from datamodules.atomic_write import write_text_atomic
from uda.models.sync_bn import broadcast_buffers_


class SyncBuffers(pl.Callback):
    """Make buffers (BatchNorm running statistics) identical on all ranks before each validation
    and at the end of training, by broadcasting rank 0's. DDP only syncs buffers at the start of
    a forward, so each rank's last steps leave its own statistics; without this, ranks would
    validate and checkpoint different models. Placed first, so checkpoints see synced buffers."""

    @staticmethod
    def _sync(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            broadcast_buffers_(pl_module, src=0)

    def on_validation_start(self, trainer, pl_module):
        self._sync(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._sync(trainer, pl_module)


class QuietLibraries(pl.Callback):
    """Installs uda.console's filters of library noise in every process: ranks started with
    ddp_spawn (or re-executed by Lightning's ddp launcher) do not inherit the CLI's filters."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        from uda.console import quiet_library_noise
        quiet_library_noise()


class WriteOnTrainStart(pl.Callback):
    """Write `text` to `path` atomically when training starts, i.e. after a resumed checkpoint
    has been loaded: a resume that fails leaves the previous file as it was. Rank 0 writes."""

    def __init__(self, path, text: str):
        self.path, self.text = path, text

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            write_text_atomic(self.path, self.text)


class GracefulStop(pl.Callback):
    """SIGINT (Ctrl-C) / SIGTERM / SIGUSR1 (preemption, SLURM's warning signal) -> at the end of
    the current iteration, write last.ckpt and stop without validating; `requested` tells the
    caller which signal came (`uda train` then exits with EXIT_INTERRUPTED). A signal during the
    last iteration lets the run finish normally. A second SIGINT aborts at once
    (KeyboardInterrupt, no checkpoint). Ranks agree through a reduced decision, so a signal
    reaching one rank stops all of them at the same iteration (no rank waits in a collective
    the others never enter)."""

    def __init__(self, checkpoint, signals=(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)):
        self.checkpoint, self.signals = checkpoint, tuple(signals)
        self.requested: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if signum == signal.SIGINT and self.requested == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: do not wait for the iteration to end
        self.requested = signum

    def on_train_start(self, trainer, pl_module):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in self.signals}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        it = getattr(pl_module, "iteration", trainer.global_step)
        last = trainer.max_steps // max(1, getattr(pl_module, "optimizer_steps_per_iteration", 1))
        if it >= last:  # training ends here anyway: finish normally (final evaluation, exit 0)
            return
        if trainer.strategy.reduce_boolean_decision(self.requested is not None, all=False):
            self.stopped_at = it
            self.checkpoint.save(trainer, "last")
            trainer.should_stop = True
            trainer.limit_val_batches = 0  # Lightning validates on should_stop: exit promptly

    def on_train_end(self, trainer, pl_module):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


class IoUTable(pl.Callback):
    """The per-class IoU of each validation as a wandb table (CSV/TensorBoard already get
    `val_iou/<class>` scalars from the module)."""

    def on_validation_end(self, trainer, pl_module):
        from pytorch_lightning.loggers import WandbLogger
        from uda.panels import log_iou_table
        if trainer.sanity_checking or not pl_module.last_results:
            return
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if wandb_loggers:
            log_iou_table(wandb_loggers, pl_module.last_results, pl_module.iteration)


class IterationProgressBar(TQDMProgressBar):
    """Lightning's bar counts the training total in optimizer steps when the loader is
    infinite (DRANet: 3 per iteration), which triples the total and the ETA; this one counts
    training iterations."""

    @property
    def total_train_batches(self):
        module = self.trainer.lightning_module
        return self.trainer.max_steps // getattr(module, "optimizer_steps_per_iteration", 1)
