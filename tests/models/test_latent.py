"""Latent spans (Future-L1): what a decode feeds back equals the teacher-forced forward with those
latents in the `<|latent_pad|>` slots; spans end at the budget (forced, log-prob 0) or early at a
sampled `<|latent_end|>`; a sampled end-of-turn inside a span does not stop the row."""
import pytest
import torch

from framelab.models.config import ModelConfig, VisionConfig
from framelab.models.generation import decode
from framelab.models.latent import (FORCED_END, LATENT, TEXT, LatentSpans, ProjectionHead,
                                    latent_hidden_states, pool_targets, sample_vmf)
from framelab.models.multimodal import MultimodalLM

VIDEO, IM_END, LS, LE, LP = 5, 2, 7, 8, 9
MODEL = ModelConfig(vocab_size=48, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8,
                    intermediate=64, vision=VisionConfig(width=16, depth=1, heads=2, patch_size=8))


def tiny(head=False):
    torch.manual_seed(0)
    model = MultimodalLM(MODEL, VIDEO).eval()
    if head:
        model.latent_head = ProjectionHead(MODEL.hidden).eval()
    return model


def prompts():
    g = torch.Generator().manual_seed(3)
    rows = [[1, 20, 21] + [VIDEO] * 8 + [22, IM_END, 1, 23, LS],
            [1, 24] + [VIDEO] * 8 + [IM_END, 1, 23, LS]]
    return rows, [[torch.rand(4, 3, 32, 32, generator=g)] for _ in rows]


@pytest.mark.parametrize("head", [False, True])
def test_decode_feedback_equals_teacher_forced_forward(head):
    model, budget = tiny(head), 5
    rows, videos = prompts()
    spans = LatentSpans(model, len(rows), LS, LE, LP, budget, open_rows=torch.ones(2, dtype=torch.bool))
    gen = decode(model, rows, budget + 4, videos=videos, step_hook=spans,
                 suppress_tokens=[VIDEO, LP, LE, IM_END])      # no early end, no stop
    per_row = spans.rows([len(t) for t in gen.tokens])
    for r, toks, lps in zip(per_row, gen.tokens, gen.logprobs):
        assert r["kinds"][:budget + 1] == [LATENT] * budget + [FORCED_END]
        assert toks[:budget + 1] == [LP] * budget + [LE]
        assert lps[:budget + 1] == [0.0] * (budget + 1)
        assert all(k == TEXT for k in r["kinds"][budget + 1:])
        assert r["z"].shape == (budget, MODEL.hidden)
    # teacher-forced: each sequence alone, the recorded latents in its slots
    for (prompt, vids, toks, r) in zip(rows, videos, gen.tokens, per_row):
        ids = torch.tensor([prompt + toks[:-1]])
        with torch.no_grad():
            hidden = latent_hidden_states(model, ids, vids, None, LP, r["z"])[0]
            slots = (ids[0] == LP).nonzero().flatten()
            fed = hidden[slots - 1]
            if head:
                fed = model.latent_head(fed)
            torch.testing.assert_close(fed, r["z"], atol=2e-5, rtol=1e-4)
            text = torch.arange(len(prompt) - 1 + budget + 1, ids.shape[1])
            greedy = model.lm.logits(hidden[text]).index_fill(
                -1, torch.tensor([VIDEO, LP, LE, IM_END]), float("-inf")).argmax(-1)
            assert greedy.tolist() == toks[budget + 1:]


def step(spans, tokens):
    hidden = torch.randn(len(tokens), 4)
    return spans(0, torch.tensor(tokens), hidden)


def test_span_budget_and_early_end():
    spans = LatentSpans(torch.nn.Module(), 3, LS, LE, LP, budget=2)
    x, y = 30, 31
    steps = [[LS, LS, y], [x, x, -1], [IM_END, LE, -1], [x, y, -1], [y, y, -1]]
    reports = [step(spans, s)[2].tolist() for s in steps]
    kinds = torch.stack(spans.kinds, 1).tolist()
    # row 0: two latents (a sampled <|im_end|> inside the span is a latent too), then forced end
    assert [r[0] for r in reports] == [LS, LP, LP, LE, y]
    assert kinds[0] == [TEXT, LATENT, LATENT, FORCED_END, TEXT]
    # row 1: one latent, then a sampled <|latent_end|> ends the span early (a text token)
    assert [r[1] for r in reports] == [LS, LP, LE, y, y]
    assert kinds[1] == [TEXT, LATENT, TEXT, TEXT, TEXT]
    # row 2 never opened a span; a stopped row (-1) stays as it is
    assert [r[2] for r in reports] == [y, -1, -1, -1, -1]
    rows = spans.rows([5, 4, 1])
    assert rows[0]["z"].shape[0] == 2 and rows[1]["z"].shape[0] == 1 and rows[2]["z"].shape[0] == 0


def test_early_end_through_decode():
    """A model that always prefers <|latent_end|> ends every span after the <|latent_start|>."""
    model = tiny()
    base = model.lm.logits
    model.lm.logits = lambda h: base(h).index_add(-1, torch.tensor([LE]),
                                                  torch.full((*h.shape[:-1], 1), 50.0))
    rows, videos = prompts()
    spans = LatentSpans(model, 2, LS, LE, LP, 4, open_rows=torch.ones(2, dtype=torch.bool))
    gen = decode(model, rows, 3, videos=videos, step_hook=spans, suppress_tokens=[VIDEO, LP])
    for toks, r in zip(gen.tokens, spans.rows([len(t) for t in gen.tokens])):
        assert toks[0] == LE and r["kinds"][0] == TEXT    # sampled, not forced
        assert r["z"].shape[0] == 0 and TEXT == r["kinds"][1]


def test_pool_targets_and_vmf_sample():
    feats = torch.arange(12.0).reshape(6, 2)
    torch.testing.assert_close(pool_targets(feats, 3), torch.tensor([[1., 2.], [5., 6.], [9., 10.]]))
    assert pool_targets(feats, 12).shape == (12, 2)
    mu = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(2000, 4)
    g = torch.Generator().manual_seed(0)
    tight = sample_vmf(mu, 200.0, g)
    loose = sample_vmf(mu, 0.01, g)
    torch.testing.assert_close(tight.norm(dim=-1), torch.ones(2000))
    assert tight[:, 0].mean() > 0.98 and abs(float(loose[:, 0].mean())) < 0.05


def test_min_steps_ignores_an_end_sampled_too_soon():
    spans = LatentSpans(torch.nn.Module(), 1, LS, LE, LP, budget=4, min_steps=2)
    reports = [step(spans, s)[2].tolist()[0] for s in ([LS], [LE], [LE], [LE], [30])]
    assert reports == [LS, LP, LP, LE, 30]          # two latents, then the sampled end counts
    assert torch.stack(spans.kinds, 1).tolist()[0] == [TEXT, LATENT, LATENT, TEXT, TEXT]
