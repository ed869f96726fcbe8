"""Generated token sequences for smoke tests (experiment `debug`): no files, no tokenizer.

Each sequence is an arithmetic progression modulo the vocabulary: a random start and a step
drawn from `steps`, so the next token is predictable from the two before it. A model that learns
to attend drives the loss well below the uniform ln(vocab). Sample i of a split is a pure
function of (seed of the split, i); train/val/test use disjoint seeds.

Exact, elastic resume: `batch_size` is the *global* batch. Training step k of an epoch takes the
global positions [start + k·B, start + (k+1)·B) of the epoch's order (a pure function of
(seed, epoch)); rank r of W reads the r-th of W equal slices of that block. The data position
(epoch, samples consumed) is recorded when Lightning hands a batch over and is saved in the
checkpoint, so a resumed run continues with exactly the next block, on any number of dataloader
workers and any world size that divides the batch. The tail of an epoch shorter than one global
batch is dropped (every rank gets the same number of batches).
"""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from framelab.datamodules.lockstep import dist_info
from framelab.datamodules.order import epoch_order
from framelab.errors import UserError

SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


class ProgressionDataset(Dataset):
    def __init__(self, size: int, seq_len: int, vocab_size: int, seed: int,
                 steps: tuple[int, ...] = (1, 2, 3, 5)):
        self.size, self.seq_len, self.vocab_size = size, seq_len, vocab_size
        self.seed, self.steps = seed, tuple(steps)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        start = int(rng.integers(self.vocab_size))
        step = int(rng.choice(self.steps))
        ids = (start + step * np.arange(self.seq_len)) % self.vocab_size
        ids = torch.from_numpy(ids.astype(np.int64))
        return {"input_ids": ids, "labels": ids.clone(), "sample_id": index}


class ResumableBatches:
    """Index lists of this rank's training batches, from a global data position onward."""

    def __init__(self, size: int, batch_size: int, seed: int, epoch: int, start: int):
        rank, world = dist_info()
        if batch_size % world:
            raise UserError(f"data.batch_size={batch_size} (the global batch) must be divisible by "
                            f"the number of processes ({world})")
        self.order = epoch_order(size, seed, epoch)
        self.global_batch, self.local = batch_size, batch_size // world
        self.rank, self.epoch, self.start = rank, epoch, start

    def __iter__(self):
        pos = self.start
        while pos + self.global_batch <= len(self.order):
            first = pos + self.rank * self.local
            yield self.order[first:first + self.local].tolist()
            pos += self.global_batch

    def __len__(self) -> int:
        return (len(self.order) - self.start) // self.global_batch


class SyntheticTokenDataModule(L.LightningDataModule):
    def __init__(self, vocab_size: int = 512, seq_len: int = 64, batch_size: int = 16,
                 train_size: int = 4096, val_size: int = 256, num_workers: int = 0,
                 seed: int = 0, steps: tuple[int, ...] = (1, 2, 3, 5)):
        super().__init__()
        self.save_hyperparameters()
        self.epoch, self.consumed = 0, 0

    def _dataset(self, split: str, size: int) -> ProgressionDataset:
        h = self.hparams
        return ProgressionDataset(size, h.seq_len, h.vocab_size, h.seed * 10 + SPLIT_SEEDS[split],
                                  tuple(h.steps))

    def train_dataloader(self):
        return _PositionedLoader(self)

    def next_batches(self) -> ResumableBatches:
        """This rank's batches from the current data position (the next epoch when this one has
        no full step left)."""
        h = self.hparams
        if h.train_size - self.consumed < h.batch_size:
            self.epoch, self.consumed = self.epoch + 1, 0
        return ResumableBatches(h.train_size, h.batch_size, h.seed, self.epoch, self.consumed)

    def _eval_loader(self, split: str) -> DataLoader:
        _, world = dist_info()
        return DataLoader(self._dataset(split, self.hparams.val_size),
                          batch_size=max(1, self.hparams.batch_size // world),
                          num_workers=self.hparams.num_workers)

    def val_dataloader(self):
        return self._eval_loader("val")

    def test_dataloader(self):
        return self._eval_loader("test")

    def predict_dataloader(self):
        return self._eval_loader("test")

    # ---- data position ------------------------------------------------------------------
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        position = batch.pop("_position", None) if isinstance(batch, dict) else None
        if position is not None:
            self.epoch, self.consumed = position
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.hparams.seed,
                "train_size": self.hparams.train_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "train_size"):
            if state.get(key, self.hparams[key]) != self.hparams[key]:
                raise UserError(f"checkpoint has data.{key}={state[key]} but the config says "
                                f"{self.hparams[key]}; resume with the same data settings")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])


class _PositionedLoader:
    """Training batches from the datamodule's data position; each carries `_position` =
    (epoch, consumed after it). Every iteration (one per epoch) starts where the position is.
    It has no length on purpose: Lightning then ends the epoch when the batches run out, which
    stays right after a mid-epoch resume (a length would count from the epoch's start)."""

    def __init__(self, datamodule: SyntheticTokenDataModule):
        self.datamodule = datamodule

    def __iter__(self):
        dm = self.datamodule
        batches = dm.next_batches()
        dataset = dm._dataset("train", dm.hparams.train_size)
        consumed = batches.start
        for batch in DataLoader(dataset, batch_sampler=batches, num_workers=dm.hparams.num_workers):
            consumed += batches.global_batch
            batch["_position"] = (batches.epoch, consumed)
            yield batch
