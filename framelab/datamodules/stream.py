"""The epoch's sample order and each consumer's slice of it.

An epoch's global order is a pure function of (seed, epoch): a permutation of all samples of the
shard set (or the identity without shuffling). Reading resumes from a global position `start`
(samples consumed so far). Rank r of W reads global positions start + r, start + r + W, ...; the
epoch ends for everyone when fewer than W samples are left, so at most W - 1 samples are dropped
per epoch and every rank reads exactly the same number. Within a rank, DataLoader worker w of K
yields the rank's items w, w + K, ...; the DataLoader interleaves workers round-robin, so the rank
sees its items in order whatever K is.

Items are dicts made by a `transform(members, ref)` (which may say which members it reads with a
`wants(ext) -> bool` method, so unused members such as ground truth are never read); a sample that cannot be used becomes a skip
item {"_skip": reason}, so positions never shift. Every item carries _pos, _index, _key and _shard.
A transform whose output depends on a budget that changes during the run (frames, tokens) has a
`budget()` method; its value is read once per item, handed to the transform, and kept as
item["_budget"], so the batcher can tell items decoded under another budget and decode them again.
"""
from __future__ import annotations

import logging

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from framelab.datamodules.reader import SampleError, ShardSet

log = logging.getLogger(__name__)


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Global sample order of an epoch (indices into the shard set)."""
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_samples)


def per_rank(num_samples: int, start: int, world: int) -> int:
    """Items each rank reads in an epoch resumed at global position `start`."""
    return max(num_samples - start, 0) // world


class SampleStream(IterableDataset):
    """Items of one rank's slice of an epoch, in order; see the module docstring."""

    def __init__(self, shards: ShardSet, transform, seed: int = 0, shuffle: bool = True):
        super().__init__()
        self.shards = shards
        self.transform = transform
        self.seed = seed
        self.shuffle = shuffle
        self.epoch, self.start, self.rank, self.world = 0, 0, 0, 1

    def configure(self, epoch: int, start: int, rank: int, world: int) -> None:
        self.epoch, self.start, self.rank, self.world = epoch, start, rank, world

    def positions(self) -> range:
        """Global positions this rank reads this epoch."""
        n = per_rank(len(self.shards), self.start, self.world)
        first = self.start + self.rank
        return range(first, first + n * self.world, self.world)

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        order = epoch_order(len(self.shards), self.seed, self.epoch, self.shuffle)
        positions = self.positions()
        for j in range(worker, len(positions), workers):
            pos = positions[j]
            yield self.item(int(order[pos]), pos)

    def item(self, index: int, pos: int) -> dict:
        """Transformed sample `index` (or a skip item), tagged with its position."""
        ref = self.shards.refs[index]
        budget = self.transform.budget() if hasattr(self.transform, "budget") else None
        try:
            wants = getattr(self.transform, "wants", None)
            exts = None if wants is None else [e for e in ref.members if wants(e)]
            members = self.shards.read(index, exts)
            item = self.transform(members, ref) if budget is None else self.transform(members, ref, budget)
        except SampleError as e:
            item = {"_skip": e.reason}
        except Exception as e:  # noqa: BLE001 - one bad sample must never stop a rank
            log.warning("sample %s of %s failed: %s: %s", ref.key, self.shards.shard_name(index),
                        type(e).__name__, e)
            item = {"_skip": f"error:{type(e).__name__}"}
        item.update(_pos=pos, _index=index, _key=ref.key, _shard=self.shards.shard_name(index))
        if budget is not None:
            item["_budget"] = budget
        return item
