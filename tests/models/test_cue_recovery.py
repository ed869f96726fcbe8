"""ViCuR's sink-token cue recovery (framelab/models/cue_recovery.py) inside MultimodalLM: a fresh
module changes nothing, a trained one changes the sink rows only and only in prefill, cached
decoding equals the full forward, packed documents equal separate ones, generation's interface
is unchanged."""
import inspect

import pytest
import torch

from framelab.models.config import ModelConfig, VisionConfig
from framelab.models.generation import decode, generate, generate_multimodal
from framelab.models.multimodal import MultimodalLM

VID, SINK, OTHER = 5, 3, 9
VISION = VisionConfig(width=16, depth=1, heads=2, patch_size=8)


def config(every: int) -> ModelConfig:
    return ModelConfig(vocab_size=48, hidden=32, layers=4, heads=4, kv_heads=2, head_dim=8,
                       intermediate=64, cue_recovery=every, vision=VISION)


def models(every: int = 2, trained: bool = True):
    """(model with cue recovery, the same weights without it)."""
    torch.manual_seed(0)
    with_cue = MultimodalLM(config(every), VID, sink_token_id=SINK).eval()
    plain = MultimodalLM(config(0), VID).eval()
    plain.load_state_dict({k: v for k, v in with_cue.state_dict().items()
                           if not k.startswith("cue_recovery.")})
    if trained:                               # as if trained: a non-zero output projection
        for block in with_cue.cue_recovery.blocks:
            torch.nn.init.normal_(block.o_proj.weight, std=0.5)
    return with_cue, plain


def prompt(seed: int, text: int = 4) -> tuple[list[int], torch.Tensor]:
    """[OTHER, SINK, text..., 4 video placeholders, text...] and its (2, 3, 32, 32) video."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(10, 48, (2 * text,), generator=g).tolist()
    ids = [OTHER, SINK] + words[:text] + [VID] * 4 + words[text:] + [SINK, 11]
    return ids, torch.rand(2, 3, 32, 32, generator=g)


def test_fresh_module_leaves_logits_unchanged():
    with_cue, plain = models(trained=False)
    ids, video = prompt(0)
    x = torch.tensor([ids])
    assert torch.equal(with_cue(x, [video]).logits, plain(x, [video]).logits)


def test_blocks_follow_every_kth_layer_and_start_at_zero():
    m, _ = models(every=2, trained=False)
    assert m.cue_recovery.after == [0, 2]
    assert all(float(b.o_proj.weight.detach().abs().sum()) == 0 for b in m.cue_recovery.blocks)
    with pytest.raises(ValueError, match="cue_recovery"):
        ModelConfig(cue_recovery=-1)
    with pytest.raises(ValueError, match="sink token"):
        MultimodalLM(config(5), VID)


def test_only_the_sink_row_changes():
    """The block's update touches the first <|im_start|> only: a later <|im_start|> of the same
    document is not a sink, and a trained module changes nothing before the sink."""
    m, plain = models()
    ids, video = prompt(1)
    x = torch.tensor([ids])
    inputs = m.prepare(x, [video])
    sink = inputs.cue.sink[0].nonzero()[:, 0].tolist()
    assert sink == [1]                                  # the first start token, not the last
    h = torch.randn(1, len(ids), 32)
    changed = (m.cue_recovery(0, h, inputs.cue.sink, inputs.cue.visual, inputs.cue.doc) != h)
    assert changed.any(-1)[0].nonzero()[:, 0].tolist() == [1]
    assert torch.equal(m.cue_recovery(1, h, inputs.cue.sink, inputs.cue.visual, inputs.cue.doc), h)
    out, ref = m(x, [video]).logits, plain(x, [video]).logits
    assert torch.equal(out[:, 0], ref[:, 0])            # before the sink: untouched
    assert not torch.allclose(out[:, 1:], ref[:, 1:])   # the sink and what reads it: changed


def test_no_visual_tokens_no_change():
    m, plain = models()
    x = torch.tensor([[OTHER, SINK, 12, 13, 14]])
    assert torch.equal(m(x).logits, plain(x).logits)


def test_runs_in_prefill_only_and_cached_decode_equals_full_forward():
    m, _ = models()
    calls = []
    m.cue_recovery.register_forward_hook(lambda mod, args, out: calls.append(args[0]))
    rows = [prompt(2)[0], prompt(3, text=2)[0]]
    videos = [[prompt(2)[1]], [prompt(3, text=2)[1]]]
    gen = decode(m, rows, 6, videos=videos)                       # greedy, cached
    assert calls == [0, 1, 2, 3]          # one prefill over the 4 layers, no decode step
    uncached = decode(m, rows, 6, videos=videos, use_cache=False)
    assert uncached.tokens == gen.tokens
    for row, vids, toks, lps in zip(rows, videos, gen.tokens, gen.logprobs):
        full = m(torch.tensor([row + toks]), vids).logits[0].log_softmax(-1)
        at = torch.arange(len(row) - 1, len(row) - 1 + len(toks))
        assert full[at].argmax(-1).tolist() == toks
        torch.testing.assert_close(full[at, toks], torch.tensor(lps), atol=1e-5, rtol=1e-5)


def test_packed_documents_equal_separate_ones():
    """One sink per document of a packed row, reading only its own document's video."""
    m, _ = models()
    (a, va), (b, vb) = prompt(4), prompt(5, text=3)
    packed = torch.tensor([a + b])
    cu = torch.tensor([0, len(a), len(a) + len(b)], dtype=torch.int32)
    inputs = m.prepare(packed, [va, vb], cu)
    assert inputs.cue.sink[0].nonzero()[:, 0].tolist() == [1, len(a) + 1]
    joint = m.hidden_states(packed, [va, vb], cu)
    sep = torch.cat([m.hidden_states(torch.tensor([a]), [va]),
                     m.hidden_states(torch.tensor([b]), [vb])], 1)
    torch.testing.assert_close(joint, sep, atol=1e-5, rtol=1e-5)


def test_generate_interface_unchanged():
    assert list(inspect.signature(generate_multimodal).parameters) == [
        "model", "prompts", "videos", "max_new_tokens", "temperature", "top_k", "top_p",
        "stop_tokens", "pad_id", "generator"]
    assert list(inspect.signature(generate).parameters) == [
        "model", "prompts", "max_new_tokens", "temperature", "top_k", "top_p", "stop_tokens",
        "pad_id", "use_cache", "generator"]
    m, _ = models()
    ids, video = prompt(6)
    out = generate_multimodal(m, [ids], [[video]], 3)
    assert len(out) == 1 and len(out[0]) == 3
