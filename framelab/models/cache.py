"""KV cache for prefill + incremental decode.

Each layer stores a tuple of tensors shaped (B, T, ...) (keys and values for grouped-query
attention; an attention variant may store other per-token state). Storage grows by doubling, so
a decode step writes in place instead of concatenating. `seen` is the number of tokens already
cached; the model advances it once per forward, after every layer has written.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, capacity: int = 256):
        self.seen = 0
        self._capacity = capacity
        self._store: list[list[torch.Tensor] | None] = [None] * num_layers

    def update(self, layer: int, *new: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Write this step's tensors (B, S, ...) after the cached ones; return all (B, seen+S, ...)."""
        step = new[0].shape[1]
        end = self.seen + step
        store = self._store[layer]
        if store is None or store[0].shape[1] < end:
            cap = max(self._capacity, 1)         # every layer grows to the same capacity
            while cap < end:
                cap *= 2
            grown = [t.new_zeros((t.shape[0], cap, *t.shape[2:])) for t in new]
            if store is not None:
                for g, old in zip(grown, store):
                    g[:, : self.seen] = old[:, : self.seen]
            self._capacity = cap
            store = self._store[layer] = grown
        for buf, t in zip(store, new):
            buf[:, self.seen:end] = t
        return tuple(buf[:, :end] for buf in store)

    def advance(self, steps: int) -> None:
        self.seen += steps

    def bytes_per_token(self) -> int:
        """Cache bytes per token summed over layers (for benchmarks)."""
        total = 0
        for store in self._store:
            if store is not None:
                total += sum(t[0, 0].numel() * t.element_size() for t in store)
        return total
