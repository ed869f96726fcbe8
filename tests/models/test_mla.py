"""M²LA: absorbed decode equals the expanded computation; cached decode and generation equal a full
forward; the cache holds d_c + kv_heads * qk_rope_dim values per token and layer."""
import pytest
import torch

from framelab.kernels import AttentionSpec
from framelab.models import DecoderLM, MultimodalLM, generate, preset
from framelab.models.attention import MultiHeadLatentAttention, default_rope_pairs
from framelab.models.generation import generate_multimodal


def mla_config(**kw):
    return preset("tiny", attention="mla", kv_lora_rank=24, qk_rope_dim=4,
                  mrope_section=(2, 3, 3), **kw)


def test_default_rope_pairs_cover_every_axis():
    pairs = default_rope_pairs(16, 6, (2, 3, 3)).tolist()
    assert pairs == [0, 2, 5]                      # one pair from each of t, h, w (highest freq)
    assert default_rope_pairs(16, 16, (2, 3, 3)).tolist() == list(range(8))


@pytest.mark.parametrize("masked", [False, True])
def test_absorbed_decode_equals_expanded(masked):
    torch.manual_seed(0)
    layer = MultiHeadLatentAttention(64, 4, 2, 16, 24, 4, torch.tensor([[0, 5], [1, 7]]))
    b, t = 3, 11
    x = torch.randn(b, t, 64)
    angles = torch.randn(b, t, 8)
    q_nope, q_rope, c_kv, k_r = layer.project(x, angles.cos(), angles.sin())
    mask = None
    if masked:
        mask = torch.rand(b, 1, 1, t) > 0.3
        mask[..., -1] = True
    spec = AttentionSpec(causal=True, mask=mask)
    ref = layer.expanded(q_nope[:, -1:], q_rope[:, -1:], c_kv, k_r, spec)[:, 0]
    got = layer.absorbed(q_nope[:, -1], q_rope[:, -1], c_kv, k_r, mask)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_cached_decode_equals_full_forward_and_cache_size():
    torch.manual_seed(0)
    model = DecoderLM(mla_config()).eval()
    ids = torch.randint(0, 512, (2, 14))
    full = model(ids).logits
    cache = model.new_cache(4)
    steps = [model(ids[:, :8], cache=cache).logits]
    for i in range(8, 14):
        steps.append(model(ids[:, i:i + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    # per layer and token: 24 latent + 2 groups x 4 rotary dims, fp32
    assert cache.bytes_per_token() == model.config.layers * (24 + 2 * 4) * 4


def test_mla_generation_cached_equals_uncached_mixed_lengths():
    torch.manual_seed(1)
    model = DecoderLM(mla_config()).eval()
    prompts = [[5, 6, 7, 8, 9], [3], [10, 11, 12]]
    cached = generate(model, prompts, max_new_tokens=8)
    plain = generate(model, prompts, max_new_tokens=8, use_cache=False)
    assert cached == plain
    alone = [generate(model, [p], max_new_tokens=8)[0] for p in prompts]
    assert cached == alone


def test_multimodal_mla_generation_equals_full_forward():
    torch.manual_seed(2)
    cfg = mla_config(vision={"width": 32, "depth": 1, "heads": 2, "patch_size": 8})
    model = MultimodalLM(cfg, video_token_id=500).eval()
    video = torch.rand(4, 3, 32, 32)           # 4 frames -> 2 x 2 x 2 = 8 vision tokens
    prompt = [1, 2] + [500] * 8 + [3, 4]
    out = generate_multimodal(model, [prompt, [7, 8, 9]], [[video], []], max_new_tokens=6)
    # the reference: re-run the whole sequence for every new token, no cache
    for row, (p, vids) in enumerate(([prompt, [video]], [[7, 8, 9], []])):
        seq = list(p)
        for _ in range(6):
            logits = model(torch.tensor([seq]), videos=vids).logits[0, -1]
            seq.append(int(logits.argmax()))
        assert out[row] == seq[len(p):]
