"""Reporting results from inside the rank-0 process.

With fork/spawn launchers the calling process never sees the workers' module state, so the
results of a validation are printed and written by rank 0 itself, from a callback.
"""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from uda.io import write_json_atomic
from uda.metrics.report import format_table


class ResultsReport(pl.Callback):
    """After a validation whose iteration equals `at_iteration` (None: any), rank 0 prints the
    per-class table and `header`, and writes the results (plus `extra`) to `output`."""

    def __init__(self, header: str, output: str | Path | None = None, extra: dict | None = None,
                 at_iteration: int | None = None, note: str | None = None):
        self.header, self.output, self.extra = header, output, dict(extra or {})
        self.at_iteration, self.note = at_iteration, note

    def on_validation_end(self, trainer, pl_module):
        if not trainer.is_global_zero or trainer.sanity_checking or pl_module.last_results is None:
            return
        if self.at_iteration is not None and pl_module.last_results_step != self.at_iteration:
            return
        results = {**pl_module.last_results, "step": pl_module.last_results_step, **self.extra}
        print(format_table(results))
        print(f"target mIoU ({self.header}, {results['num_images']} images): "
              f"{results['mIoU']:.2f}", flush=True)
        if self.output:
            write_json_atomic(self.output, results)
            print(f"results: {self.output}")
        if self.note:
            print(self.note)
