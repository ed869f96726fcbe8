"""FMT behaviour: the masks really cut information flow; cached generation equals uncached; the
teacher-forced training pass predicts what generation samples."""
import pytest
import torch

from framelab.models.sar import (FMTConfig, FullyMaskedTransformer, SamplingConfig, generate,
                                 make_partition)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: OpenMP threads only contend
    yield
    torch.set_num_threads(threads)


def tiny(**kw):
    torch.manual_seed(0)
    return FullyMaskedTransformer(FMTConfig(codebook_size=64, num_classes=5, grid=(4, 4), hidden=32,
                                            enc_layers=2, dec_layers=2, heads=2, kv_heads=1,
                                            head_dim=16, intermediate=64, **kw)).eval()


def logits_of(model, tokens, labels, partition):
    hidden, _ = model(tokens, labels, partition)
    return model.logits(hidden)


@pytest.mark.parametrize("name", ["raster-N-fixed", "random-5-random", "random-4-cosine"])
def test_a_token_only_influences_later_sets(name):
    model = tiny()
    n, g = 16, torch.Generator().manual_seed(1)
    p = make_partition(name, n, 1, g)
    tokens, labels = torch.randint(0, 64, (1, n), generator=g), torch.tensor([2])
    base = logits_of(model, tokens, labels, p)
    sets = p.set_ids()
    for i in range(n):                       # i-th generated token
        changed = tokens.clone()
        pos = p.order[0, i]
        changed[0, pos] = (changed[0, pos] + 7) % 64
        diff = (logits_of(model, changed, labels, p) - base).abs().amax(-1)[0]
        later = sets > sets[i]
        assert diff[~later].max() == 0, f"token {i} leaked into its own or an earlier set"
        if later.any():
            assert diff[later].min() > 0, f"token {i} does not reach a later set"


def test_one_set_sees_only_the_class():
    model = tiny()
    p = make_partition("random-1-fixed", 16, 2, torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3])
    a = logits_of(model, torch.randint(0, 64, (2, 16)), labels, p)
    b = logits_of(model, torch.randint(0, 64, (2, 16)), labels, p)
    assert torch.equal(a, b)
    c = logits_of(model, torch.randint(0, 64, (2, 16)), torch.tensor([1, 3]), p)
    assert not torch.allclose(a[0], c[0]) and torch.equal(a[1], c[1])


@pytest.mark.parametrize("name,sampling", [
    ("raster-N-fixed", SamplingConfig()),
    ("random-16-random", SamplingConfig(temperature=1.0, top_k=8)),
    ("random-6-cosine", SamplingConfig(cfg_scale=3.0, cfg_schedule="linear")),
    ("random-1-fixed", SamplingConfig(temperature=0.7, cfg_scale=2.0)),
    ("random-3-random", SamplingConfig(temperature=1.5)),
])
def test_cached_generation_equals_uncached(name, sampling):
    model = tiny()
    for seed in range(3):
        p = make_partition(name, 16, 4, torch.Generator().manual_seed(seed))
        labels = torch.tensor([0, 1, 2, 4])
        cached = generate(model, labels, p, sampling, torch.Generator().manual_seed(seed), True)
        uncached = generate(model, labels, p, sampling, torch.Generator().manual_seed(seed), False)
        assert torch.equal(cached, uncached)
        assert cached.shape == (4, 16) and cached.min() >= 0 and cached.max() < 64


@pytest.mark.parametrize("rope", [True, False])
def test_greedy_generation_matches_the_training_pass(rope):
    """Decoding with the cache, set by set, reproduces the teacher-forced logits of every set."""
    model = tiny(rope=rope)
    p = make_partition("random-5-random", 16, 3, torch.Generator().manual_seed(4))
    labels = torch.tensor([0, 2, 4])
    tokens = generate(model, labels, p, SamplingConfig(temperature=0))
    hidden, targets = model(tokens, labels, p)
    assert torch.equal(model.logits(hidden).argmax(-1), targets)


def test_sampling_respects_top_k():
    model = tiny()
    p = make_partition("raster-4-fixed", 16, 8, None)
    labels = torch.zeros(8, dtype=torch.long)
    greedy = generate(model, labels, p, SamplingConfig(temperature=0))
    top1 = generate(model, labels, p, SamplingConfig(temperature=1.0, top_k=1),
                    torch.Generator().manual_seed(0))
    assert torch.equal(greedy, top1)
