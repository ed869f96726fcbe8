"""Save and restore the random-number generators of every rank (torch, CUDA, numpy, python).

Validation is made neutral (the states are put back after it). The states are captured when a
checkpoint is written (end of a training step) and put back at
the start of the first training step after a resume, not at load time: building the dataloader
iterator draws from torch's generator, and it happens after loading. So the step after a resume
sees exactly the generator states the uninterrupted run saw. Each rank's state is gathered into
the checkpoint; after an elastic resume rank r takes the saved state of rank r mod (old world).
Dataloader workers are reseeded by Lightning; framelab's datasets derive their randomness from
the sample index, so workers hold no state worth saving.
"""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback


def capture() -> dict:
    """The generators' states in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGStateCallback(Callback):
    def __init__(self):
        self._pending: list[dict] | None = None
        self._before_validation: dict | None = None

    # Validation runs at times a resumed run may not repeat (e.g. when stopping): keep it from
    # moving the generators, so the training stream of random numbers is the same either way.
    def on_validation_start(self, trainer, pl_module) -> None:
        self._before_validation = capture()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._before_validation is not None:
            restore(self._before_validation)
            self._before_validation = None

    def state_dict(self) -> dict:
        mine = capture()
        if dist.is_available() and dist.is_initialized():
            everyone: list = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, mine)
            return {"ranks": everyone}
        return {"ranks": [mine]}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict["ranks"]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending:
            restore(self._pending[trainer.global_rank % len(self._pending)])
            self._pending = None
