"""A CSVLogger that appends to an existing `metrics.csv` (a resumed run keeps the rows logged
before the interruption). Lightning's writer deletes the file when it starts; this one reads its
header instead, appends rows, and rewrites the file (old rows kept) only when new columns appear.
Rows logged after the resumed checkpoint and before a crash are logged again by the resumed run:
the `step` column tells them apart."""
from __future__ import annotations

import csv

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


class AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def _record_new_keys(self) -> set[str]:
        """New columns go after the existing ones (the file's header order is kept)."""
        new_keys = set().union(*self.metrics) - set(self.metrics_keys)
        self.metrics_keys.extend(sorted(new_keys))
        return new_keys


class AppendingCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment
