"""Skip optimizer steps whose loss or gradients are not finite; stop after too many in a row.

A NaN/Inf loss or gradient (on any rank) drops every gradient before the optimizer step, so the
weights and the optimizer state stay as they were (the lr schedule still advances); the step is
counted (`train/nonfinite_steps`).
After `max_consecutive` such steps in a row the run stops: since every bad step was skipped, the
weights are still those from before the first bad step, and a checkpoint of them is written to
`checkpoints/nonfinite-step<first bad step>.ckpt`; the message says where it happened.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class NonFiniteGuard(Callback):
    def __init__(self, max_consecutive: int = 3):
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.in_a_row = 0
        self.first_bad_step: int | None = None
        self._loss_bad = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log("train/nonfinite_steps", float(self.skipped))

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._loss_bad = not bool(torch.isfinite(loss.detach()).all())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        bad = self._loss_bad or any(
            p.grad is not None and not bool(torch.isfinite(p.grad).all())
            for p in pl_module.parameters())
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            self.in_a_row, self.first_bad_step = 0, None
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # nothing to apply: the optimizer leaves these weights alone
        self.skipped += 1
        self.in_a_row += 1
        if self.first_bad_step is None:
            self.first_bad_step = trainer.global_step
        log.warning("framelab: non-finite loss or gradient at step %d (batch %d); optimizer step "
                    "skipped (%d in a row)", trainer.global_step, trainer.fit_loop.epoch_loop
                    .batch_idx, self.in_a_row)
        if self.in_a_row >= self.max_consecutive:
            path = Path(trainer.default_root_dir) / "checkpoints" / (
                f"nonfinite-step{self.first_bad_step:07d}.ckpt")
            trainer.save_checkpoint(path)
            trainer.should_stop = True
            message = (f"framelab: stopping: {self.in_a_row} non-finite steps in a row, the first "
                       f"at step {self.first_bad_step} (epoch {trainer.current_epoch}); {path} holds "
                       "the weights from before it; lower the learning rate or inspect that batch")
            log.error(message)
            print(message)

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row,
                "first_bad_step": self.first_bad_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict["skipped"]
        self.in_a_row = state_dict["in_a_row"]
        self.first_bad_step = state_dict["first_bad_step"]
