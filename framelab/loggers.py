"""`CSVLogger`: Lightning's CSV logger, except that a run resumed in place keeps its metrics.

Lightning's writer deletes an existing `metrics.csv` when it starts, so resuming in the same run
directory (`hydra.run.dir=DIR ckpt_path=last`, a requeued SLURM job) erased the rows of the steps
before the resume. This writer keeps them: on its first save it drops only the rows of steps the
resumed run logs again (those from the first newly logged step on: after a kill, the steps past
the last checkpoint are replayed), then appends. A fresh run in a used directory starts at step 0
and so replaces the old rows, as before.
"""
from __future__ import annotations

import csv
import os

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        self._resumed = False

    def save(self) -> None:
        if self.metrics and not self._resumed:
            self._resumed = True
            self._keep_rows_before(min(int(m["step"]) for m in self.metrics))
        super().save()

    def _keep_rows_before(self, step: int) -> None:
        path = self.metrics_file_path
        if not os.path.isfile(path):
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), list(reader)
        kept = [r for r in rows if r.get("step") not in (None, "") and int(float(r["step"])) < step]
        if not kept:
            os.remove(path)
            return
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, path)
        self.metrics_keys = keys  # the file's header; new keys rewrite it (Lightning's path)


class CSVLogger(_LightningCSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment
