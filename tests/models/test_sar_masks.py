"""SAR partitions and the three FMT masks: exact matrices for AR, one set, and block-causal sets."""
import pytest
import torch

from framelab.errors import UserError
from framelab.models.sar.masks import (decoder_cross_mask, decoder_self_mask, encoder_mask,
                                       with_class)
from framelab.models.sar.partition import (PartitionSampler, interval_sizes, make_order,
                                           make_partition, parse)


def test_ar_partition_gives_causal_masks():
    n = 6
    p = make_partition("raster-N-fixed", n, batch=2)
    assert p.sizes == [1] * n and torch.equal(p.order, torch.arange(n).expand(2, n))
    sets = p.set_ids()
    enc = with_class(sets)  # class token + every token
    tril = torch.tril(torch.ones(n + 1, n + 1, dtype=torch.bool))
    assert torch.equal(encoder_mask(enc), tril)
    assert torch.equal(decoder_self_mask(sets), torch.eye(n, dtype=torch.bool))
    # query i (predicting token i) sees the class token and tokens < i: causal LM on [cls, t0, ...]
    assert torch.equal(decoder_cross_mask(sets, enc), torch.tril(torch.ones(n, n + 1, dtype=torch.bool)))


def test_one_set_gives_full_masks():
    n = 5
    p = make_partition("random-1-fixed", n, batch=3, generator=torch.Generator().manual_seed(0))
    sets = p.set_ids()
    assert torch.equal(encoder_mask(sets), torch.ones(n, n, dtype=torch.bool))
    assert torch.equal(decoder_self_mask(sets), torch.ones(n, n, dtype=torch.bool))
    cross = decoder_cross_mask(sets, with_class(sets))
    assert torch.equal(cross[:, 0], torch.ones(n, dtype=torch.bool))  # only the class token
    assert not cross[:, 1:].any()


def test_block_causal_masks_for_uneven_sets():
    sets = torch.tensor([0, 0, 1, 2, 2, 2])
    enc = torch.tensor([[1, 1, 0, 0, 0, 0],
                        [1, 1, 0, 0, 0, 0],
                        [1, 1, 1, 0, 0, 0],
                        [1, 1, 1, 1, 1, 1],
                        [1, 1, 1, 1, 1, 1],
                        [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(encoder_mask(sets), enc)
    own = torch.tensor([[1, 1, 0, 0, 0, 0],
                        [1, 1, 0, 0, 0, 0],
                        [0, 0, 1, 0, 0, 0],
                        [0, 0, 0, 1, 1, 1],
                        [0, 0, 0, 1, 1, 1],
                        [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(decoder_self_mask(sets), own)
    cross = decoder_cross_mask(sets, with_class(sets[:3]))   # encoder holds cls + sets 0, 1
    assert torch.equal(cross, torch.tensor([[1, 0, 0, 0]] * 2 + [[1, 1, 1, 0]] + [[1, 1, 1, 1]] * 3,
                                           dtype=torch.bool))


def test_interval_sizes():
    assert interval_sizes(10, 3, "fixed") == [3, 3, 4]
    cos = interval_sizes(256, 16, "cosine")
    assert sum(cos) == 256 and len(cos) == 16 and min(cos) >= 1
    assert cos[0] < cos[-1]                     # few tokens first, many at the end (MAR)
    assert interval_sizes(64, 64, "cosine") == [1] * 64
    g = torch.Generator().manual_seed(3)
    rnd = interval_sizes(64, 16, "random", g)
    assert sum(rnd) == 64 and len(rnd) == 16 and min(rnd) >= 1 and len(set(rnd)) > 1


def test_orders_and_names():
    g = torch.Generator().manual_seed(0)
    o = make_order("random", 16, 4, g)
    assert all(torch.equal(r.sort().values, torch.arange(16)) for r in o)
    assert not torch.equal(o[0], o[1])
    spiral = [0, 1, 2, 5, 8, 7, 6, 3, 4]
    assert make_order("custom", 9, 2, custom=spiral)[1].tolist() == spiral
    with pytest.raises(UserError):
        make_order("custom", 9, 2, custom=[0, 0, 1, 2, 3, 4, 5, 6, 7])
    assert parse("random-16-random").name == "random-16-random"
    for bad in ("zigzag-4-fixed", "raster-0-fixed", "raster-4", "random-4-linear"):
        with pytest.raises(UserError):
            parse(bad)
    with pytest.raises(UserError):
        make_partition("raster-100-fixed", 64, 1)


def test_sampler_draws_ranges_and_mixes():
    sampler = PartitionSampler([{"name": "random-2..32-random", "weight": 3},
                                {"name": "raster-N-fixed", "weight": 1}])
    g = torch.Generator().manual_seed(0)
    ks = [sampler.sample(64, 2, g).num_sets for _ in range(200)]
    assert 20 < ks.count(64) < 80                    # about a quarter are AR
    others = [k for k in ks if k != 64]
    assert min(others) >= 2 and max(others) <= 32 and len(set(others)) > 8


def test_range_up_to_n():
    cfg = parse("random-1..N-random")
    g = torch.Generator().manual_seed(0)
    ks = {cfg.resolve_sets(16, g) for _ in range(300)}
    assert min(ks) == 1 and max(ks) == 16
    with pytest.raises(UserError):
        parse("random-8..4-random")
