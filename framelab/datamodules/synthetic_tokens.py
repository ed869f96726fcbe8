"""Generated token sequences for smoke tests (experiment `debug`): no files, no tokenizer.

Each sequence is an arithmetic progression modulo the vocabulary: a random start and a step
drawn from `steps`, so the next token is predictable from the two before it. A model that learns
to attend drives the loss well below the uniform ln(vocab). Sample i of a split is a pure
function of (seed of the split, i); train/val/test use disjoint seeds.
"""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

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


class SyntheticTokenDataModule(L.LightningDataModule):
    def __init__(self, vocab_size: int = 512, seq_len: int = 64, batch_size: int = 16,
                 train_size: int = 4096, val_size: int = 256, num_workers: int = 0,
                 seed: int = 0, steps: tuple[int, ...] = (1, 2, 3, 5)):
        super().__init__()
        self.save_hyperparameters()

    def _dataset(self, split: str, size: int) -> ProgressionDataset:
        h = self.hparams
        return ProgressionDataset(size, h.seq_len, h.vocab_size, h.seed * 10 + SPLIT_SEEDS[split],
                                  tuple(h.steps))

    def _loader(self, split: str, size: int, shuffle: bool) -> DataLoader:
        return DataLoader(self._dataset(split, size), batch_size=self.hparams.batch_size,
                          shuffle=shuffle, num_workers=self.hparams.num_workers,
                          drop_last=shuffle, persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self):
        return self._loader("train", self.hparams.train_size, shuffle=True)

    def val_dataloader(self):
        return self._loader("val", self.hparams.val_size, shuffle=False)

    def test_dataloader(self):
        return self._loader("test", self.hparams.val_size, shuffle=False)

    def predict_dataloader(self):
        return self._loader("test", self.hparams.val_size, shuffle=False)
