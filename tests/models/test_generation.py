"""KV cache and generation: cached decoding equals the full forward over the same tokens; the
decode loop reports teacher-forced log-probs, stop flags, and applies its step hook."""
import pytest
import torch

from framelab.models import DecoderLM, MultimodalLM, generate, preset
from framelab.models.generation import decode, generate_multimodal, sample_next

VID = 500


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


# ---- the decode loop: log-probs, flags, multimodal, step hook --------------------------------

def multimodal(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = preset("tiny", vision={"width": 32, "depth": 1, "heads": 2, "patch_size": 8}, **kw)
    return MultimodalLM(cfg, video_token_id=VID).eval()


def video(seed):
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))  # 8 tokens


def teacher_forced_logprobs(logits_of, prompt, tokens, temperature=1.0):
    """log-softmax(logits / temperature) of a full forward over prompt + tokens, at the tokens."""
    with torch.no_grad():
        logits = logits_of(list(prompt) + list(tokens))[len(prompt) - 1:-1]
    logp = torch.log_softmax(logits.float() / temperature, -1)
    return logp.gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def test_logprobs_equal_a_teacher_forced_forward():
    m = model(4)
    prompts = [[5, 9, 11, 3, 2, 8], [7, 1], [42]]
    greedy = decode(m, prompts, 7)
    sampled = decode(m, prompts, 7, temperature=0.7, top_k=50, top_p=0.95,
                     generator=torch.Generator().manual_seed(3))
    for out, temperature in ((greedy, 1.0), (sampled, 0.7)):   # greedy reports temperature 1
        for p, toks, lps in zip(prompts, out.tokens, out.logprobs):
            ref = teacher_forced_logprobs(lambda s: m(torch.tensor([s])).logits[0], p, toks,
                                          temperature)
            torch.testing.assert_close(torch.tensor(lps), ref, atol=1e-5, rtol=1e-5)
    assert greedy.tokens == generate(m, prompts, 7)


def test_stop_and_truncation_flags():
    m = model(3)
    prompts = [[1, 2, 3], [9, 8]]
    free = decode(m, prompts, 6)
    assert free.finished == [False, False] and free.truncated == [True, True]
    stop = free.tokens[0][2]
    out = decode(m, prompts, 6, stop_tokens=[stop])
    assert out.tokens[0] == free.tokens[0][: free.tokens[0].index(stop) + 1]
    assert out.finished[0] and not out.truncated[0]
    assert out.finished[1] == (stop in free.tokens[1])
    assert out.truncated[1] == (not out.finished[1])
    assert [len(t) for t in out.tokens] == [len(lp) for lp in out.logprobs]
    with pytest.raises(ValueError, match="at least 1"):
        decode(m, prompts, 0)
    with pytest.raises(ValueError, match="at least one token"):
        decode(m, [[1], []], 3)


@pytest.mark.parametrize("attention", ["gqa", "mla"])
def test_multimodal_cached_equals_uncached_and_full_forward(attention):
    kw = dict(attention="mla", kv_lora_rank=24, qk_rope_dim=4) if attention == "mla" else {}
    mm = multimodal(5, **kw)
    # the last row ends on a 1 x 1 x 2 video: its next token goes to start + 2 on every axis
    prompts = [[1, 2] + [VID] * 8 + [3, 4], [7, 8, 9], [6] + [VID] * 2]
    videos = [[video(0)], [], [torch.rand(2, 3, 16, 32)]]
    cached = decode(mm, prompts, 6, videos=videos)
    plain = decode(mm, prompts, 6, videos=videos, use_cache=False)
    assert cached.tokens == plain.tokens
    torch.testing.assert_close(torch.tensor(cached.logprobs), torch.tensor(plain.logprobs),
                               atol=1e-5, rtol=1e-5)
    assert generate_multimodal(mm, prompts, videos, 6) == cached.tokens
    for p, vids, toks, lps in zip(prompts, videos, cached.tokens, cached.logprobs):
        ref = teacher_forced_logprobs(lambda s: mm(torch.tensor([s]), vids).logits[0], p, toks)
        torch.testing.assert_close(torch.tensor(lps), ref, atol=1e-5, rtol=1e-5)


def test_hook_feeds_hidden_states_back_like_a_forward_over_embeddings():
    """Future-L1 style: row 0 feeds its last hidden state back at steps 0 and 2, row 1 never;
    the result equals re-running a forward over the resulting input embeddings."""
    m = model(6)
    prompts = [[5, 9, 11, 3], [7, 1]]
    calls = []

    def hook(step, tokens, hidden):
        calls.append((step, tokens.tolist()))
        return hidden, torch.tensor([step in (0, 2), False])

    plain = decode(m, prompts, 6)
    for use_cache in (True, False):
        calls.clear()
        out = decode(m, prompts, 6, step_hook=hook, use_cache=use_cache)
        assert [c[1] for c in calls] == [list(t) for t in zip(*out.tokens)]
        assert [c[0] for c in calls] == list(range(6))
        assert out.tokens[0] != plain.tokens[0] and out.tokens[1] == plain.tokens[1]
        # the manual reference: a forward over inputs_embeds, one more input per step
        with torch.no_grad():
            inputs = m.embed_tokens(torch.tensor([prompts[0]]))
            for step, (tok, lp) in enumerate(zip(out.tokens[0], out.logprobs[0])):
                hidden = m.hidden_states(inputs_embeds=inputs)[:, -1]
                logp = torch.log_softmax(m.logits(hidden)[0].float(), -1)
                assert tok == int(logp.argmax())
                assert abs(lp - float(logp[tok])) < 1e-5
                nxt = hidden if step in (0, 2) else m.embed_tokens(torch.tensor([tok]))
                inputs = torch.cat([inputs, nxt[:, None]], 1)
