"""KVCache storage: it grows by doubling (a decode step past capacity writes in place, not a copy
per token), every layer to the same capacity, and keeps what was cached."""
import torch

from framelab.models.cache import KVCache


def test_storage_doubles_and_keeps_the_cached_tokens():
    cache, capacities = KVCache(num_layers=2, capacity=4), []
    for step in range(12):
        for layer in range(2):
            keys, = cache.update(layer, torch.full((1, 1, 2), float(step)))
        cache.advance(1)
        capacities.append([cache._store[layer][0].shape[1] for layer in range(2)])
    assert [c[0] for c in capacities] == [4] * 4 + [8] * 4 + [16] * 4
    assert all(a == b for a, b in capacities)
    assert keys[0, :, 0].tolist() == [float(s) for s in range(12)]
