"""Stop cleanly when the cluster says so -- SIGTERM (preemption) and SIGUSR1 (SLURM's warning
before the time limit) -- or when the data does (`DataStop`: too many unreadable samples).

A signal only raises a flag. At the end of the current training step every rank learns whether
any rank got one (one all-reduce per step), all stop together, `checkpoints/last.ckpt` is written
with the state after that step, validation is skipped, and the process exits 0.
`framelab fit ... ckpt_path=last` continues. Under SLURM, rank 0 requeues the job after SIGUSR1
when `requeue` is on, so the requeued job resumes by itself.

A `DataStop` is raised on every rank at the same batch, before that batch trains; `last.ckpt` is
written with the state after the last trained step, so repairing the shards (or raising
`data.max_skip_rate`) and resuming with `ckpt_path=last` loses no step.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from framelab.errors import DataStop

log = logging.getLogger(__name__)


class PreemptionCallback(Callback):
    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1"), requeue: bool = True):
        self.signals = tuple(signals)
        self.requeue = requeue
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        self.received = signal.Signals(signum).name

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        # Lightning installs its own SIGTERM handler before this hook; ours replaces it for the
        # duration of training and is removed at the end.
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.signals:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handler)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if not stop:
            return
        trainer.should_stop = True
        trainer.limit_val_batches = 0  # no validation on the way out: the grace period is short
        trainer.save_checkpoint(self._last_path(trainer))
        if trainer.is_global_zero:
            log.warning("framelab: got %s; stopping after step %d with a checkpoint; resume with "
                        "ckpt_path=last", self.received or "a stop signal on another rank",
                        trainer.global_step)
            if self.received == "SIGUSR1" and self.requeue and "SLURM_JOB_ID" in os.environ:
                subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)

    @staticmethod
    def _last_path(trainer: L.Trainer) -> Path:
        """Where `ckpt_path=last` looks: the ModelCheckpoint folder's last.ckpt."""
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath:
                return Path(cb.dirpath) / "last.ckpt"
        return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)  # restore the signal handlers
        if not isinstance(exception, DataStop) or trainer.state.fn != "fit" or not trainer.global_step:
            return
        path = self._last_path(trainer)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            log.warning("framelab: the data stopped the run after step %d; saved %s; resume with "
                        "ckpt_path=last once the shards are repaired", trainer.global_step, path)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
