"""EMA: an exponential moving average of the module's weights, used for evaluation and sampling.

    shadow <- d * shadow + (1 - d) * weights     after every optimizer step (every `every_n_steps`)
    d = min(decay, (1 + updates) / (10 + updates))  with `warmup` (our choice: early averages do
                                                    not drag the random initialisation along)

- Validation, test and predict run with the EMA weights swapped in (`use_for_eval`), then the
  training weights are put back; other code (the sample-image callback, benchmarks) calls
  `EMA.find(trainer)` and `with ema.swapped(module): ...`.
- The shadow weights and the update count are this callback's `state_dict()`, so they travel in
  every checkpoint and a resume continues the average exactly (tested). `ema_state(ckpt)` reads
  them back from a checkpoint file's dict without a Trainer.
- Only floating-point parameters and buffers are averaged; the shadow is kept in fp32.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from lightning.pytorch.callbacks import Callback

from framelab.errors import UserError


class EMA(Callback):
    def __init__(self, decay: float = 0.999, every_n_steps: int = 1, warmup: bool = True,
                 use_for_eval: bool = True):
        if not 0.0 <= decay < 1.0:
            raise UserError(f"callbacks.ema.decay={decay}: must lie in [0, 1)")
        if every_n_steps < 1:
            raise UserError(f"callbacks.ema.every_n_steps={every_n_steps}: must be >= 1")
        self.decay, self.every_n_steps, self.warmup = decay, every_n_steps, warmup
        self.use_for_eval = use_for_eval
        self.shadow: dict[str, torch.Tensor] | None = None
        self.updates = 0
        self._backup: dict[str, torch.Tensor] | None = None
        self._last_step = -1   # one update per optimizer step, also with gradient accumulation

    @staticmethod
    def find(trainer) -> "EMA | None":
        return next((c for c in trainer.callbacks if isinstance(c, EMA)), None) if trainer else None

    @staticmethod
    def _tracked(module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in module.state_dict().items() if v.is_floating_point()}

    def _ensure(self, module) -> None:
        tracked = self._tracked(module)
        if self.shadow is None:
            self.shadow = {k: v.detach().float().clone() for k, v in tracked.items()}
            return
        missing = sorted(set(tracked) - set(self.shadow))
        if missing:
            raise UserError(f"EMA state from the checkpoint lacks weights {missing[:3]}...: it was "
                            "saved for another model; resume with the same module.model")
        for k, v in self.shadow.items():
            self.shadow[k] = v.to(tracked[k].device)

    # ---- updates -----------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        self._ensure(pl_module)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:
            return
        self._last_step = step
        self._ensure(pl_module)
        d = self.decay
        if self.warmup:
            d = min(d, (1 + self.updates) / (10 + self.updates))
        for k, v in self._tracked(pl_module).items():
            self.shadow[k].lerp_(v.detach().float(), 1.0 - d)
        self.updates += 1

    # ---- swapping ----------------------------------------------------------------------------
    @contextmanager
    def swapped(self, module):
        """Run the body with the EMA weights in `module`, then restore the training weights."""
        self._swap_in(module)
        try:
            yield module
        finally:
            self._swap_out(module)

    @torch.no_grad()
    def _swap_in(self, module) -> None:
        if self.shadow is None or self._backup is not None:
            return
        tracked = self._tracked(module)
        self._backup = {k: v.detach().clone() for k, v in tracked.items()}
        for k, v in tracked.items():
            v.copy_(self.shadow[k].to(v.device, v.dtype))

    @torch.no_grad()
    def _swap_out(self, module) -> None:
        if self._backup is None:
            return
        for k, v in self._tracked(module).items():
            v.copy_(self._backup[k])
        self._backup = None

    def _eval_start(self, trainer, pl_module) -> None:
        if self.use_for_eval:
            if self.shadow is not None:
                self._ensure(pl_module)
            self._swap_in(pl_module)

    def _eval_end(self, trainer, pl_module) -> None:
        self._swap_out(pl_module)

    on_validation_start = on_test_start = on_predict_start = _eval_start
    on_validation_end = on_test_end = on_predict_end = _eval_end

    # ---- checkpoint --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates,
                "shadow": None if self.shadow is None
                else {k: v.detach().cpu().clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.shadow = None if state["shadow"] is None else {k: v.clone() for k, v in state["shadow"].items()}


def ema_state(checkpoint: dict) -> dict[str, torch.Tensor] | None:
    """The EMA shadow weights stored in a Lightning checkpoint dict, or None if it has none."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("EMA") and isinstance(state, dict) and state.get("shadow"):
            return state["shadow"]
    return None
