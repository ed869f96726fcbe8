"""FutureLatentModule: the span (or hint) goes before each reply with the right labels; the
alignment loss matches each latent predicted one slot earlier to the pooled future-frame targets
and reaches the LM (never the frozen vision tower); the LA-DAPO loss equals a hand-written
reference; bad settings are one line. Built without a datamodule: a tiny model."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from framelab.datamodules.special_tokens import (IM_END, LATENT_END, LATENT_PAD, LATENT_START,
                                                 PAD, THINK, THINK_END, VIDEO_PAD, VISION_END,
                                                 VISION_START)
from framelab.errors import UserError
from framelab.lightning_modules.future_latent import FutureLatentModule
from framelab.models.config import ModelConfig, VisionConfig
from framelab.models.latent import pool_targets
from framelab.rl.rollout import Rollout

TOKENS = {VIDEO_PAD: 5, PAD: 0, IM_END: 2, LATENT_START: 7, LATENT_END: 8, LATENT_PAD: 9,
          THINK: 14, THINK_END: 15, VISION_START: 3, VISION_END: 4}
LS, LE, LP = 7, 8, 9
MODEL = ModelConfig(vocab_size=64, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8,
                    intermediate=64, vision=VisionConfig(width=16, depth=1, heads=2, patch_size=8))


class CharTokenizer:
    def encode(self, text, add_special_tokens=False):
        return SimpleNamespace(ids=[20 + ord(c) % 40 for c in text])

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def module(**kw) -> FutureLatentModule:
    torch.manual_seed(0)
    latent = {"budget": 3, **kw.pop("latent", {})}
    m = FutureLatentModule(model={}, latent=latent, freeze={"vision": True, "projector": True},
                           **kw)
    m.tokenizer = CharTokenizer()
    m.install({"config": MODEL.to_dict(), "tokens": TOKENS})
    m.evaluator.tokenizer = m.tokenizer
    return m


def batch():
    """Two packed documents [user text, 8 placeholders, <|im_end|>, assistant, reply, <|im_end|>]
    and a trailing padding document; 4 observed and 6 future frames each."""
    g = torch.Generator().manual_seed(1)
    docs = [[1, 20, 21] + [5] * 8 + [2, 1, 23, 30, 31, 2], [1, 22] + [5] * 8 + [2, 1, 23, 32, 2]]
    ids, labels = [], []
    for d in docs:
        ids += d
        n_reply = 3 if len(d) == 17 else 2
        labels += [-100] * (len(d) - n_reply) + d[-n_reply:]
    ids += [0, 0]
    labels += [-100, -100]
    cu = torch.tensor([0, 17, 32, 34], dtype=torch.int32)
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "cu_seqlens": cu,
            "videos": [torch.rand(4, 3, 32, 32, generator=g) for _ in docs],
            "future_videos": [torch.rand(6, 3, 32, 32, generator=g) for _ in docs],
            "meta": [{"key": "a", "hint": "ab"}, {"key": "b", "hint": "c"}],
            "sample_ids": ["a", "b"]}


def test_layout_puts_the_span_before_each_reply():
    m = module()
    b = m.layout(batch())
    ids, lab = b["input_ids"][0].tolist(), b["labels"][0].tolist()
    assert ids[:14] == [1, 20, 21] + [5] * 8 + [2, 1, 23]
    assert ids[14:19] == [LS, LP, LP, LP, LE] and ids[19:22] == [30, 31, 2]
    assert lab[14:19] == [LS, -100, -100, -100, LE] and lab[19:22] == [30, 31, 2]
    assert b["cu_seqlens"].tolist() == [0, 22, 42]          # the padding document is dropped
    assert b["targets"].shape == (6, 32)                     # two spans x budget 3
    text = module(mode="text").layout(batch())
    hint = CharTokenizer().encode("ab").ids
    assert text["input_ids"][0, 14:18].tolist() == [14] + hint + [15]
    assert text["labels"][0, 14:18].tolist() == [14] + hint + [15] and text["targets"] is None
    answer = module(mode="answer").layout(batch())
    assert answer["input_ids"].shape[1] == 32


def test_alignment_matches_the_previous_slot_and_reaches_only_the_lm():
    m = module()
    b = m.layout(batch())
    # the targets: the frozen tower + projector's tokens of the future clip, pooled to the budget
    with torch.no_grad():
        feats = m.model.projector(m.model.vision([batch()["future_videos"][0]])[0])
    torch.testing.assert_close(b["targets"][:3], pool_targets(feats, 3))
    assert not b["targets"].requires_grad
    loss, n, terms = m.sft_loss(b)
    assert n == 2 * 2 + 3 + 2          # span start + end and the reply, per document
    hidden = m.model.hidden_states(b["input_ids"], b["videos"], b["cu_seqlens"])  # (no splice)
    assert hidden.shape[1] == b["input_ids"].shape[1]
    # reference: re-run with the targets in the slots and read the slot before each target
    from framelab.models.latent import latent_hidden_states
    h = latent_hidden_states(m.model, b["input_ids"], b["videos"], b["cu_seqlens"], LP,
                             b["targets"])[0]
    slots = (b["input_ids"][0] == LP).nonzero().flatten()
    want = F.mse_loss(h[slots - 1], b["targets"])
    torch.testing.assert_close(terms["align"], want.detach())
    m.model.zero_grad()
    terms_align = m.alignment(latent_hidden_states(m.model, b["input_ids"], b["videos"],
                                                   b["cu_seqlens"], LP, b["targets"]),
                              b["input_ids"], b["targets"])
    terms_align.backward()
    lm_grads = [p.grad for p in m.model.lm.parameters() if p.grad is not None]
    assert lm_grads and sum(float(g.abs().sum()) for g in lm_grads) > 0
    for part in (m.model.vision, m.model.projector):
        assert all(p.grad is None and not p.requires_grad for p in part.parameters())
    cos = module(latent={"loss": "cosine"})
    _, _, t = cos.sft_loss(cos.layout(batch()))
    assert 0.0 < float(t["align"]) < 2.0


def test_la_dapo_loss_equals_a_hand_written_reference():
    m = module(stage="rl", rl={"group_size": 2, "kl_coef": 0.0, "dual_clip": 3.0},
               latent={"kappa": 0.5, "clip": 0.1, "alpha": 0.5})
    prompt = [1, 20, 21] + [5] * 8 + [2, 1, 23]
    video = [torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))]
    # two completions: [LS, LP, LP, LE(forced), 30, 2] and [LS, LE(sampled), 31, 2]
    comps = [[LS, LP, LP, LE, 30, 2], [LS, LE, 31, 2]]
    masks = [[True, False, False, False, True, True], [True, True, True, True]]
    z = [torch.randn(2, 32, generator=torch.Generator().manual_seed(3)), torch.zeros(0, 32)]
    mu = [z[0] + 0.3 * torch.randn(2, 32, generator=torch.Generator().manual_seed(4)), z[1]]
    ro = Rollout([prompt, prompt], [video, video], comps, masks,
                 [[0.0] * len(c) for c in comps], [True, True], [False, False], [1, 1], [0, 0], 2,
                 {"z": z, "mu": mu})
    adv = torch.tensor([1.0, -1.0])
    loss, stats = m.chunk_loss(ro, adv, None)
    # reference. text: ratio 1 (old = current, detached): -A per text token, token mean
    n_text = sum(map(sum, masks))
    text = sum(-a * sum(ms) for a, ms in zip(adv.tolist(), masks)) / n_text
    # latent: mu_new is the hidden state one slot before each latent, teacher-forced
    ids = torch.tensor([prompt + comps[0]])
    with torch.no_grad():
        from framelab.models.latent import latent_hidden_states
        h = latent_hidden_states(m.model, ids, video, None, LP, z[0])[0]
    slots = (ids[0] == LP).nonzero().flatten()
    lat = 0.0
    for j, s in enumerate(slots.tolist()):
        lp = 0.5 * float(h[s - 1] @ z[0][j])
        old = 0.5 * float(mu[0][j] @ z[0][j])
        r = math.exp(lp - old)
        lat += -min(r * 1.0, min(max(r, 0.9), 1.1) * 1.0)
    want = text + 0.5 * lat / len(slots)
    assert math.isclose(float(loss.detach()), want, rel_tol=1e-4, abs_tol=1e-5)
    assert stats["latent_steps"] == 1.0
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in m.model.lm.parameters())


def test_format_and_answer_part():
    m = module()
    assert m.well_formed([LS, LP, LE, 30, 2]) and not m.well_formed([30, LS, LP, LE])
    assert not m.well_formed([LS, LP, LP, 30])
    assert m.answer_ids([LS, LP, LE, 30, 31, 2]) == [30, 31, 2]
    assert module(mode="answer").well_formed([30])


@pytest.mark.parametrize("kw, match", [
    ({"mode": "video"}, "module.mode"),
    ({"stage": "dpo"}, "module.stage"),
    ({"latent": {"budget": 0}}, "module.latent.budget"),
    ({"latent": {"loss": "l1"}}, "module.latent.loss"),
    ({"latent": {"nope": 1}}, "module.latent has unknown keys"),
    ({"select": {"hint": "audio"}}, "module.select.hint"),
    ({"rewards": {"tau": 0}}, "module.rewards.tau"),
    ({"train_ids": "/no/such/file"}, "module.train_ids"),
])
def test_bad_settings_are_one_line(kw, match):
    with pytest.raises(UserError, match=match) as e:
        module(**kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("hint", ["frames", "latent", "text"])
def test_selection_keeps_what_the_hint_turns_right(hint, tmp_path, monkeypatch):
    out = tmp_path / "ids.txt"
    m = module(stage="select", select={"hint": hint, "out": str(out)})
    b = batch()
    b["meta"] = [{**meta, "format": "open", "answer": "yes", "task": "future"} for meta in b["meta"]]
    docs = m.evaluator.documents(b)
    replies = m.hinted_answers(docs, b)                       # every hint kind decodes
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    monkeypatch.setattr(m, "answer", lambda docs: ["no", "yes"])
    monkeypatch.setattr(m, "hinted_answers", lambda docs, batch: ["yes", "yes"])
    monkeypatch.setattr(m, "log", lambda *a, **k: None)
    m.test_step(b, 0)
    m.on_test_epoch_end()
    assert out.read_text() == "a\n"                         # wrong -> right only
    assert m._select_counts == [2, 1, 2]
