"""Each consumer's slice of the epoch's sample order.

An epoch's global order is a pure function of (seed, epoch) (order.py: a full permutation, shard
blocks, or none). Reading resumes from a global position `start` (samples consumed so far). Rank r
of W reads global positions start + r, start + r + W, ...; the epoch ends for everyone when fewer
than W samples are left, so at most W - 1 samples are dropped per epoch and every rank reads
exactly the same number. Within a rank, the items are cut into chunks of CHUNK consecutive items;
DataLoader worker w of K yields chunks w, w + K, ... (one list per chunk: one hand-over per chunk,
not per item); the DataLoader interleaves workers round-robin, so the rank sees its items in order
whatever K is. Each worker tells the shard set which samples it will read in which order, so
remote shards are fetched ahead (reader.py).

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

from framelab.datamodules.order import sample_order, shuffle_mode
from framelab.datamodules.reader import SampleError, ShardSet

log = logging.getLogger(__name__)
CHUNK = 4   # items a worker hands over at once


def per_rank(num_samples: int, start: int, world: int) -> int:
    """Items each rank reads in an epoch resumed at global position `start`."""
    return max(num_samples - start, 0) // world


class Chunks(IterableDataset):
    """A stream as the lists of items its `chunks()` yields (one DataLoader hand-over each)."""

    def __init__(self, stream: "SampleStream"):
        super().__init__()
        self.stream = stream

    def __iter__(self):
        return self.stream.chunks()


class SampleStream(IterableDataset):
    """Items of one rank's slice of an epoch, in order; see the module docstring."""

    def __init__(self, shards: ShardSet, transform, seed: int = 0, shuffle=True, window: int = 4):
        super().__init__()
        self.shards = shards
        self.transform = transform
        self.seed = seed
        self.mode = shuffle_mode(shuffle, shards.remote)
        self.window = window
        self._exts: dict[tuple, list | None] = {}      # member names -> those the transform reads
        self.epoch, self.start, self.rank, self.world = 0, 0, 0, 1

    def configure(self, epoch: int, start: int, rank: int, world: int) -> None:
        self.epoch, self.start, self.rank, self.world = epoch, start, rank, world

    def positions(self) -> range:
        """Global positions this rank reads this epoch."""
        n = per_rank(len(self.shards), self.start, self.world)
        first = self.start + self.rank
        return range(first, first + n * self.world, self.world)

    def order(self) -> np.ndarray:
        return sample_order(self.shards.counts, self.seed, self.epoch, self.mode, self.window)

    def __iter__(self):
        for chunk in self.chunks(1):
            yield from chunk

    def chunks(self, size: int = CHUNK):
        """This worker's items as lists of `size` (what DataLoader workers hand over)."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        order, positions = self.order(), self.positions()
        chunks = [range(c, min(c + size, len(positions)))
                  for c in range(worker * size, len(positions), workers * size)]
        self.shards.plan([order[positions[j]] for chunk in chunks for j in chunk])
        k = 0
        try:
            for chunk in chunks:
                items = []
                for j in chunk:
                    self.shards.advance(k)
                    items.append(self.item(int(order[positions[j]]), positions[j]))
                    k += 1
                yield items
        finally:  # at the end, or when the reader stops early: let go of remote shards, stop prefetching
            self.shards.close()

    def item(self, index: int, pos: int) -> dict:
        """Transformed sample `index` (or a skip item), tagged with its position."""
        ref = self.shards.refs[index]
        budget = self.transform.budget() if hasattr(self.transform, "budget") else None
        try:
            members_read = tuple(ref.members)     # samples share layouts: judged once each
            exts = self._exts.get(members_read)
            if exts is None:
                wants = getattr(self.transform, "wants", None)
                exts = self._exts[members_read] = None if wants is None else [e for e in members_read if wants(e)]
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
