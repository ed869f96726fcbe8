"""Main-process batching in lock step across ranks, with the data position and skip accounting.

`LockstepLoader` wraps a `SampleStream` in a DataLoader (workers decode and tokenize items and hand
them over a few at a time, stream.py) and forms batches in the main process. Each step every rank takes the same number c of items from
its own slice, so after any step the samples consumed by all ranks together are exactly the first
`consumed` positions of the epoch's global order; that single number is the data position. c is
the smallest of the ranks' own choices (`plan`: greedy packing up to a token budget, or a fixed
batch size), raised where needed so that every rank that still has a usable sample gets one; the
ranks agree on it with one all-gather of four integers per step (a gloo group), which also sums
their skip counts. A rank whose remaining items are all corrupt gets a batch with no documents
(collate decides its form). Every rank sees the same number of batches per epoch.

The position of a training batch travels in batch["_position"] = (epoch, consumed after it,
training batches so far); the datamodule records it when Lightning hands the batch over
(`on_before_batch_transfer`), so a checkpoint stores the position of the last batch actually
trained on, not of prefetched ones.

Budgets that change during a run (a short-to-long curriculum's frames and tokens per row) are
keyed to the batch index, not to wall-clock time: `budget(b)` sets the budget of training batch b
and returns its key, and every item that goes into batch b was decoded under that key (an item a
worker decoded earlier under another budget is decoded again here). A batch is therefore a pure
function of (data position, batch index), which is what makes a resumed run's batches identical
to the uninterrupted run's, across budget changes and whatever the prefetching.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from framelab.datamodules.stream import Chunks, SampleStream, per_rank
from framelab.errors import DataStop

_GROUPS: dict[int, object] = {}


def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _group():
    """A gloo group for the small CPU all-gathers (the default group may be NCCL)."""
    if dist.get_backend() == "gloo":
        return None
    world = dist.get_world_size()
    if world not in _GROUPS:
        _GROUPS[world] = dist.new_group(backend="gloo")
    return _GROUPS[world]


@dataclass
class StreamState:
    """Data position (epoch, samples consumed in it) and skip counters of one loader."""
    epoch: int = 0
    consumed: int = 0
    skipped: int = 0                                   # all ranks together
    seen: int = 0                                      # all ranks together
    seen_local: int = 0                                # this rank
    batches: int = 0                                   # training batches handed over, all epochs
    num_samples: int | None = None                     # size of the training set the position is in
    reasons: Counter = field(default_factory=Counter)  # this rank
    shards: Counter = field(default_factory=Counter)   # this rank

    def begin(self, num_samples: int, world: int) -> tuple[int, int]:
        """Position to start iterating from: the next epoch when this one has no full step left."""
        if per_rank(num_samples, self.consumed, world) == 0:
            self.epoch, self.consumed = self.epoch + 1, 0
        return self.epoch, self.consumed


class LockstepLoader:
    """Iterable of batches; see the module docstring. `plan(pending, pull) -> int` chooses how many
    pending items form the next batch (calling `pull()` to fetch more; it returns False at the end
    of the stream); `collate(items) -> dict` builds the batch from them (skip items included)."""

    def __init__(self, stream: SampleStream, plan, collate, state: StreamState, *, num_workers: int = 0,
                 track_position: bool = True, max_skip_rate: float = 0.05, skip_check_after: int = 64,
                 prefetch_factor: int = 2, budget=None):
        self.stream, self.plan, self.collate, self.state = stream, plan, collate, state
        self.num_workers = num_workers
        self.track_position = track_position
        self.max_skip_rate = max_skip_rate
        self.skip_check_after = skip_check_after
        self.prefetch_factor = prefetch_factor
        self.budget = budget if track_position else None

    def _loader(self) -> DataLoader:
        extra = {"prefetch_factor": self.prefetch_factor} if self.num_workers else {}
        return DataLoader(Chunks(self.stream), batch_size=None, num_workers=self.num_workers,
                          collate_fn=_identity, persistent_workers=False, **extra)

    def __iter__(self):
        rank, world = dist_info()
        if self.track_position:
            epoch, consumed = self.state.begin(len(self.stream.shards), world)
        else:  # evaluation: always the whole epoch 0 from the start
            epoch, consumed = 0, 0
        self.stream.configure(epoch, consumed, rank, world)
        # without workers the stream is read in this process directly (a DataLoader adds nothing)
        chunks = self._loader() if self.num_workers else self.stream.chunks()
        source = (item for chunk in chunks for item in chunk)
        pending: deque = deque()
        batches, key = self.state.batches, None

        def current(item: dict) -> dict:
            """The item as decoded under this batch's budget."""
            if key is None or item.get("_budget", key) == key:
                return item
            return self.stream.item(item["_index"], item["_pos"])

        def pull() -> bool:
            try:
                pending.append(current(next(source)))
                return True
            except StopIteration:
                return False

        group = _group() if world > 1 else None
        while True:
            if self.budget is not None:
                key = self.budget(batches)
                for i, item in enumerate(pending):
                    pending[i] = current(item)
            count = self.plan(pending, pull)
            need = next((i + 1 for i, it in enumerate(pending) if i < count and "_skip" not in it), 0)
            count = self._agree(count, need, world, group)
            if count == 0:
                break
            items = [pending.popleft() for _ in range(count)]
            self._count_skips(items)
            batch = self.collate(items)
            consumed += count * world
            batches += 1
            if self.track_position:
                batch["_position"] = (epoch, consumed, batches)
            yield batch
        self._check_skips(final=True)

    def _agree(self, count: int, need: int, world: int, group) -> int:
        """Common item count of this step; also refreshes the global skip totals."""
        st = self.state
        if world == 1:
            st.skipped, st.seen = sum(st.reasons.values()), st.seen_local
            self._check_skips()
            return count
        mine = torch.tensor([count, need, sum(st.reasons.values()), st.seen_local], dtype=torch.int64)
        everyone = [torch.zeros_like(mine) for _ in range(world)]
        dist.all_gather(everyone, mine, group=group)
        table = torch.stack(everyone)
        st.skipped, st.seen = int(table[:, 2].sum()), int(table[:, 3].sum())
        self._check_skips()
        return max(int(table[:, 0].min()), int(table[:, 1].max()))

    def _count_skips(self, items: list) -> None:
        st = self.state
        st.seen_local += len(items)
        for it in items:
            if "_skip" in it:
                st.reasons[it["_skip"]] += 1
                st.shards[it["_shard"]] += 1

    def _check_skips(self, final: bool = False) -> None:
        st = self.state
        if not st.skipped or (st.seen < self.skip_check_after and not final):
            return
        rate = st.skipped / max(st.seen, 1)
        if rate > self.max_skip_rate:
            reasons = ", ".join(f"{r} {n}" for r, n in st.reasons.most_common())
            shards = ", ".join(f"{s} ({n})" for s, n in st.shards.most_common(5))
            raise DataStop(f"data: {st.skipped} of {st.seen} samples skipped ({rate:.1%} > max_skip_rate "
                            f"{self.max_skip_rate:.1%}); reasons: {reasons}; shards: {shards}; "
                            "repair or remove these shards, or raise max_skip_rate")


def _identity(x):
    return x
