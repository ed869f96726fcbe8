"""The epoch's global sample order: a pure function of (seed, epoch) and the shard set's layout
(samples per shard), so any process can rebuild it, and a resumed run reads the same order.

Modes (`data.shuffle`):
- `none`: the shard set's own order (shards in order, samples in file order).
- `full`: one permutation of all samples. Any sample can land anywhere, so every shard is read
  all epoch long: meant for shards on a local disk (today's default for local data).
- `blocks`: the shards in a permuted order, cut into blocks of `window` consecutive shards; the
  samples of a block permuted among themselves. A sample moves at most within its block (`window`
  shards' worth of samples), and a reader needs only the current block's shards (and the next
  block's, prefetched) at a time: what streaming remote shards needs.

`true` chooses `blocks` when any shard is remote and `full` otherwise; `false` is `none`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from framelab.errors import UserError

MODES = ("none", "full", "blocks")


def shuffle_mode(shuffle, remote: bool) -> str:
    """The mode a `data.shuffle` value means for a shard set (remote: any shard is a URL)."""
    if shuffle is True:
        return "blocks" if remote else "full"
    if shuffle is False or shuffle is None:
        return "none"
    if shuffle in MODES:
        return shuffle
    raise UserError(f"data.shuffle={shuffle!r}: expected true (blocks for remote shards, full for "
                    "local ones), false, or one of none, full, blocks")


def check_window(window) -> int:
    """`data.shuffle_window` as an integer >= 1, or a one-line UserError."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise UserError(f"data.shuffle_window={window!r}: expected an integer >= 1 (shards whose "
                        "samples are shuffled together)")
    return window


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """`full` (or, without shuffle, `none`) order of `num_samples` samples."""
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_samples)


def sample_order(sizes: Sequence[int], seed: int, epoch: int, mode: str = "full",
                 window: int = 4) -> np.ndarray:
    """Global sample order of an epoch (indices into the shard set, whose shard s holds the
    `sizes[s]` consecutive indices after those of shards 0..s-1)."""
    total = int(sum(sizes))
    if mode != "blocks":
        return epoch_order(total, seed, epoch, mode == "full")
    rng = np.random.default_rng([seed, epoch, 0xB10C])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    shards = rng.permutation(len(sizes))
    parts = []
    for b in range(0, len(shards), window):
        block = np.concatenate([np.arange(starts[s], starts[s] + sizes[s]) for s in shards[b:b + window]])
        parts.append(block[rng.permutation(len(block))])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)

