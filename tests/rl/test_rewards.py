"""Rule-based rewards on real world samples, the registry, and the weighted RewardSet."""
import logging

import pytest
import torch

from framelab.errors import UserError
from framelab.rl.rewards import (REWARDS, RewardSet, answer_part, build_rewards, get_reward,
                                 register_reward)
from framelab.world.tasks import make_sample
from framelab.world.tasks.common import LETTERS

NOT_CALLABLE = 3


def half(completion, meta, *, length, scale=1.0):
    """A user reward named by dotted path in the tests."""
    return 0.5 * scale


def picky(completion, meta, *, length):
    """Fails on open questions (a KeyError, as a careless user reward would)."""
    return {"mcq": 1.0, "span": float("nan")}[meta["format"]]


def questions(task, params, n=4):
    """(meta, reference reply) per question of the first `n` samples, the meta merged per turn as
    VideoQAEvaluator.documents merges it."""
    out = []
    for i in range(n):
        s = make_sample(task, "train", i, params, render=False)
        replies = [t["content"] for t in s.conversation if t["role"] == "assistant"]
        turns = s.meta.get("turns") or [{}]
        out += [({**s.meta, **turn}, reply) for turn, reply in zip(turns, replies)]
    return out


@pytest.fixture(scope="module")
def rationale():
    qs = questions("describe", {"questions": 3, "mcq_prob": 1.0, "mcq_reply": "rationale"})
    assert len(qs) >= 8 and all(m["format"] == "mcq" and m["reply"] == "rationale" for m, _ in qs)
    return qs


@pytest.fixture(scope="module")
def letter():
    qs = questions("needle", {"when_prob": 0.0, "lengths": [64]})
    assert all(m["format"] == "mcq" and m["reply"] == "letter" for m, _ in qs)
    return qs


@pytest.fixture(scope="module")
def open_qs():
    qs = questions("describe", {"questions": 3, "mcq_prob": 0.0})
    assert all(m["format"] == "open" for m, _ in qs)
    return qs


@pytest.fixture(scope="module")
def span():
    qs = questions("needle", {"when_prob": 1.0, "lengths": [64]})
    assert all(m["format"] == "span" for m, _ in qs)
    return qs


def wrong_letter(meta):
    return next(c for c in LETTERS if c != meta["answer"])


def wrong_text(meta):
    return next(c for c in meta["choices"] if c != meta["answer_text"])


def r(name, completion, meta, length=5, **params):
    return get_reward(name)(completion, meta, length=length, **params)


# ---- built-in rewards ------------------------------------------------------------------------
def test_format_world(rationale, letter, open_qs, span):
    for meta, ref in rationale + letter + open_qs + span:
        assert r("format", ref, meta) == 1.0, (ref, meta)
    meta, ref = rationale[0]
    wrong = f"Answer: {wrong_text(meta)} {wrong_letter(meta)}"
    assert r("format", wrong, meta) == 1.0        # the shape only, not the answer
    for bad in ["Answer: purplish B", meta["answer"], ref + " because",
                f"{meta['answer_text']} {meta['answer']}", "Answer: " + meta["answer_text"], ""]:
        assert r("format", bad, meta) == 0.0, bad
    meta, ref = letter[0]
    assert r("format", ref + ".", meta) == 1.0
    for bad in ["E", "(B)", f"Answer: {meta['answer_text']} {meta['answer']}", "B is right"]:
        assert r("format", bad, meta) == 0.0, bad
    meta, ref = open_qs[0]
    for bad in ["", "  ", "B", f"{ref}\n{ref}"]:
        assert r("format", bad, meta) == 0.0, bad
    assert r("format", "soon", span[0][0]) == 0.0
    assert r("format", "a red circle", {"format": "caption"}) == 0.0


def test_accuracy(rationale, letter, open_qs, span):
    for meta, ref in rationale + letter + open_qs:
        assert r("accuracy", ref, meta) == 1.0, ref
    for meta, ref in span:
        assert r("accuracy", ref, meta) > 0.8      # the reply rounds the span to 0.1 s
        lo, hi = meta["spans"][0]
        assert r("accuracy", f"{lo}-{hi}", meta) == pytest.approx(1.0)
        assert r("accuracy", f"{hi + 1}-{hi + 2}", meta) == 0.0
        assert r("accuracy", "no idea", meta) == 0.0
    for meta, ref in rationale + letter:
        assert r("accuracy", f"Answer: {meta['answer_text']} {wrong_letter(meta)}", meta) == 0.0
        assert r("accuracy", wrong_letter(meta), meta) == 0.0
    for meta, ref in open_qs:
        assert r("accuracy", ref + "ish", meta) == 0.0
        assert r("accuracy", "Answer: " + ref.upper() + ".", meta) == 1.0   # normalised
    assert r("accuracy", "red", {"format": "caption", "answer": "red"}) == 0.0


def test_choice(rationale, letter, open_qs):
    for meta, ref in rationale + letter:
        assert r("choice", ref, meta) == 1.0
        assert r("choice", wrong_letter(meta), meta) == 0.0
        assert r("choice", "I cannot tell", meta) == 0.0
    meta, ref = open_qs[0]
    assert r("choice", ref, meta) == 0.0


def test_named(rationale, letter):
    for meta, ref in rationale:
        assert r("named", ref, meta) == 1.0
        assert r("named", f"Answer: {meta['answer_text']} {wrong_letter(meta)}", meta) == 1.0
        assert r("named", f"Answer: {wrong_text(meta)} {meta['answer']}", meta) == 0.0
        assert r("named", meta["answer"], meta) == 0.0
    meta, ref = letter[0]
    assert r("named", f"Answer: {meta['answer_text']} {meta['answer']}", meta) == 0.0


def test_exact(rationale, letter, open_qs):
    for meta, ref in open_qs + letter:
        assert r("exact", ref, meta) == 1.0
    meta, ref = open_qs[0]
    assert r("exact", "nothing like it", meta) == 0.0
    meta, ref = rationale[0]
    assert r("exact", ref, meta) == 0.0 and r("exact", meta["answer"], meta) == 1.0


def test_tiou(span, rationale):
    meta, ref = span[1]
    lo, hi = meta["spans"][0]
    assert r("tiou", f"{lo}-{(lo + hi) / 2}", meta) == pytest.approx(0.5)
    assert r("tiou", ref, meta) == r("accuracy", ref, meta) > 0.8
    assert r("tiou", "7", meta) == 0.0
    meta, ref = rationale[0]
    assert r("tiou", "1.0-2.0", {**meta, "spans": [[1.0, 2.0]]}) == 0.0   # not a span question


@pytest.mark.parametrize("length,want", [(0, 0.0), (80, 0.0), (81, -0.05), (90, -0.5),
                                         (99, -0.95), (100, -1.0), (101, -1.0), (5000, -1.0)])
def test_overlong_breakpoints(length, want):
    assert r("overlong", "x", {}, length=length, max_len=100, buffer=20) == pytest.approx(want)


def test_think_style(rationale, open_qs):
    meta, ref = rationale[0]
    good = f"<think>The shape is round, not {wrong_letter(meta)}.</think>\n<answer>{ref}</answer>"
    assert r("format", good, meta, style="think") == 1.0
    assert r("format", f"  <think>\nx\n</think> <answer>\n{ref}\n</answer>\n", meta,
             style="think") == 1.0
    for bad in [ref, f"<answer>{ref}</answer>", good + " more",
                "<think>x</think><answer> </answer>",
                good + f"<answer>{ref}</answer>", "<think>x</think>"]:
        assert r("format", bad, meta, style="think") == 0.0, bad
    assert r("format", good, meta) == 0.0             # the world style wants the bare reply
    assert answer_part(good) == ref and answer_part(ref) == ref
    assert answer_part("<think>x</think><answer>B") == "B"   # cut off before </answer>
    assert answer_part("<answer>A</answer> no, <answer> B </answer>") == "B"   # the last one
    # the answer is read inside the tags: the letter in the thought does not count
    for name in ("accuracy", "choice", "named"):
        assert r(name, good, meta) == 1.0
    wrong = f"<think>{ref}</think><answer>{wrong_letter(meta)}</answer>"
    assert r("accuracy", wrong, meta) == 0.0
    meta, ref = open_qs[0]
    assert r("exact", f"<think>hm</think><answer>{ref}</answer>", meta) == 1.0


# ---- registry ----------------------------------------------------------------------------------
def test_registry_errors():
    assert {"format", "accuracy", "choice", "named", "exact", "tiou", "overlong"} <= set(REWARDS)
    with pytest.raises(ValueError, match="already registered"):
        register_reward("accuracy")(half)
    with pytest.raises(UserError) as e:
        get_reward("acuracy")
    assert "\n" not in str(e.value) and "accuracy" in str(e.value) and "overlong" in str(e.value)


def test_register_your_own():
    try:
        @register_reward("test_brevity")
        def brevity(completion, meta, *, length, target=3):
            return -abs(length - target)
        rs = build_rewards({"test_brevity": {"target": 4}})
        total, parts = rs(["a", "b"], [{}, {}], [4, 6])
        assert total.tolist() == [0.0, -2.0]
    finally:
        REWARDS.pop("test_brevity", None)


def test_dotted_path():
    assert get_reward(f"{__name__}:half") is half
    rs = build_rewards({f"{__name__}:half": 2.0, "h2": {"fn": f"{__name__}:half", "scale": 4}})
    total, parts = rs(["x"], [{}], [1])
    assert parts[f"{__name__}:half"].tolist() == [0.5] and parts["h2"].tolist() == [2.0]
    assert total.tolist() == [3.0]
    for path, words in [("no_such_pkg.mod:fn", "does not resolve"),
                        (f"{__name__}:missing", "does not resolve"),
                        (f"{__name__}:NOT_CALLABLE", "not a callable")]:
        with pytest.raises(UserError, match=words) as e:
            get_reward(path)
        assert "\n" not in str(e.value)


# ---- the weighted set --------------------------------------------------------------------------
def test_reward_set_weights(rationale):
    meta, ref = rationale[0]
    bad = f"Answer: {wrong_text(meta)} {wrong_letter(meta)}"
    rs = build_rewards({"accuracy": 2.0, "format": {"weight": 0.5},
                        "think": {"fn": "format", "style": "think", "weight": -1},
                        "overlong": {"weight": 1, "max_len": 10, "buffer": 4}})
    assert rs.names == ["accuracy", "format", "think", "overlong"]
    total, parts = rs([ref, bad, "zzz"], [meta] * 3, [3, 8, 12])
    assert total.dtype == torch.float32 and total.shape == (3,)
    assert parts["accuracy"].tolist() == [1.0, 0.0, 0.0]
    assert parts["format"].tolist() == [1.0, 1.0, 0.0]
    assert parts["think"].tolist() == [0.0, 0.0, 0.0]
    assert parts["overlong"].tolist() == pytest.approx([0.0, -0.5, -1.0])
    assert total.tolist() == pytest.approx([2.5, 0.0, -1.0])
    listed = build_rewards(["accuracy", "format"])
    assert listed.names == ["accuracy", "format"]
    assert listed([ref], [meta], [3])[0].tolist() == [2.0]
    with pytest.raises(ValueError, match="one of each"):
        rs([ref], [meta, meta], [3])


def test_reward_set_counts_errors(rationale, open_qs, span, caplog):
    metas = [rationale[0][0], open_qs[0][0], open_qs[1][0], span[0][0]]
    rs = build_rewards({"picky": {"fn": f"{__name__}:picky", "weight": 3}, "accuracy": 1})
    with caplog.at_level(logging.WARNING):
        total, parts = rs(["A"] * 4, metas, [1] * 4)
        rs(["A"], metas[1:2], [1])
    assert parts["picky"].tolist() == [1.0, 0.0, 0.0, 0.0]   # KeyError twice, NaN once
    assert rs.errors == {"picky": 4, "accuracy": 0}
    assert total[1:].tolist() == parts["accuracy"][1:].tolist()
    assert sum("picky" in rec.getMessage() for rec in caplog.records) == 1   # logged once


@pytest.mark.parametrize("cfg,words", [
    ({"accuracy": {"weight": 1, "stlye": "think"}}, "unknown keys ['stlye']; valid: weight, fn"),
    ({"format": {"style": "thinking"}}, "rewards.format: style='thinking'; choose one of world"),
    ({"accuracy": "high"}, "rewards.accuracy.weight='high'; give a finite number"),
    ({"accuracy": True}, "rewards.accuracy.weight=True"),
    ({"accuracy": {"weight": float("inf")}}, "finite number"),
    ({"overlong": {"max_len": 10}}, "rewards.overlong needs buffer"),
    ({"overlong": {"max_len": 10, "buffer": 0}}, "0 < buffer <= max_len"),
    ({"overlong": {"max_len": 10, "buffer": 11}}, "0 < buffer <= max_len"),
    ({"acc": 1.0}, "rewards.acc: unknown reward 'acc'; registered: accuracy"),
    ({"x": {"fn": "nope"}}, "rewards.x: unknown reward 'nope'"),
    ({"x": {"fn": "framelab.evaluation.exact:exact_match"}}, "takes no keyword `length`"),
    ({}, "rewards is empty"),
    (["accuracy", "accuracy"], "lists a reward twice"),
    ("accuracy", "give a mapping"),
])
def test_build_rewards_validation(cfg, words):
    with pytest.raises(UserError) as e:
        build_rewards(cfg)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_build_rewards_accepts_omegaconf():
    from omegaconf import OmegaConf
    rs = build_rewards(OmegaConf.create({"accuracy": 1.0, "tight": {"fn": "overlong",
                                                                     "max_len": 4, "buffer": 2}}))
    assert rs.names == ["accuracy", "tight"]
    assert build_rewards(OmegaConf.create(["format"])).names == ["format"]
