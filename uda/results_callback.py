"""`ResultsReport`: the Lightning callback that writes a validation's results (JSON) and prints
them, from inside the rank-0 process. The results dict and its table are `uda.metrics.results`.

With fork/spawn launchers the calling process never sees the workers' module state, so the
results of a validation are written and printed by rank 0 itself, from a callback.
"""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from uda import console
from datamodules.atomic_write import write_json_atomic
from uda.metrics.results import format_table


class ResultsReport(pl.Callback):
    """After a validation whose iteration equals `at_iteration` (None: any), rank 0 writes the
    results (plus `extra`) to `output`; once the progress bars are closed (teardown of the
    fit/validate call) it prints the per-class table and one line: the target mIoU with
    `header`, what was written (`output`, `note`)."""

    def __init__(self, header: str, output: str | Path | None = None, extra: dict | None = None,
                 at_iteration: int | None = None, note: str | None = None):
        self.header, self.output, self.extra = header, output, dict(extra or {})
        self.at_iteration, self.note = at_iteration, note
        self._pending: dict | None = None

    def on_validation_end(self, trainer, pl_module):
        if not trainer.is_global_zero or trainer.sanity_checking or pl_module.last_results is None:
            return
        if self.at_iteration is not None and pl_module.last_results_step != self.at_iteration:
            return
        results = {**pl_module.last_results, "step": pl_module.last_results_step, **self.extra}
        if self.output:
            write_json_atomic(self.output, results)
        self._pending = results

    def teardown(self, trainer, pl_module, stage):
        if self._pending is not None and trainer.is_global_zero:
            console.write(self.report(self._pending))
        self._pending = None

    def report(self, results: dict) -> str:
        line = f"target mIoU ({self.header}, {results['num_images']} images): {results['mIoU']:.2f}"
        parts = [line] + ([f"results written to {self.output}"] if self.output else []) \
            + ([self.note] if self.note else [])
        return f"{format_table(results)}\n{'; '.join(parts)}"
