"""KV cache and generation: cached decoding equals the full forward over the same tokens."""
import torch

from framelab.models import DecoderLM, generate, preset
from framelab.models.generation import sample_next


def model(seed=0):
    torch.manual_seed(seed)
    return DecoderLM(preset("tiny", tie_embeddings=False)).eval()


def test_cached_incremental_logits_equal_full_forward():
    m = model()
    x = torch.randint(0, 512, (3, 17))
    with torch.no_grad():
        full = m(x).logits
        cache = m.new_cache(capacity=4)  # small capacity: the cache must grow while decoding
        parts = [m(x[:, :9], cache=cache).logits]
        for t in range(9, 17):
            parts.append(m(x[:, t:t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.seen == 17


def test_batched_generation_equals_uncached_and_single_prompt_runs():
    m = model(1)
    prompts = [[5, 9, 11, 3, 2, 8], [7, 1], [42]]
    cached = generate(m, prompts, max_new_tokens=10)
    uncached = generate(m, prompts, max_new_tokens=10, use_cache=False)
    assert cached == uncached
    assert all(len(r) == 10 for r in cached)
    alone = [generate(m, [p], max_new_tokens=10)[0] for p in prompts]
    assert cached == alone  # left padding never leaks into a row


def test_sampling_is_reproducible_and_cache_independent():
    m = model(2)
    prompts = [[1, 2, 3], [4, 5]]
    kw = dict(max_new_tokens=8, temperature=0.8, top_k=20, top_p=0.9)
    a = generate(m, prompts, generator=torch.Generator().manual_seed(0), **kw)
    b = generate(m, prompts, generator=torch.Generator().manual_seed(0), use_cache=False, **kw)
    assert a == b


def test_stop_tokens_end_rows_independently():
    m = model(3)
    free = generate(m, [[1, 2, 3], [9, 8]], max_new_tokens=6)
    stop = free[0][2]
    out = generate(m, [[1, 2, 3], [9, 8]], max_new_tokens=6, stop_tokens=[stop])
    assert out[0] == free[0][: free[0].index(stop) + 1]
    assert out[0][-1] == stop
    if stop not in free[1]:
        assert out[1] == free[1]


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[0.0, 3.0, 2.9, -5.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, 1.0, top_k=2, generator=g)) for _ in range(200)}
    assert picks == {1, 2}
    picks = {int(sample_next(logits, 1.0, top_p=0.3, generator=g)) for _ in range(200)}
    assert picks == {1}
    assert int(sample_next(logits, 0.0)) == 1
