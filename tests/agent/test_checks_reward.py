"""The process reward on check-note verdicts (`agent_checks`, framelab.agent.rewards): the
expert's episode on the real tools earns 1, each wrong or missing verdict costs its share, the
zoom before the forced finish is not scored, and a rollout's meta must say the video's size;
with `agent.verdict_credit` each verdict is credited on its own tokens."""
from types import SimpleNamespace

import pytest

from framelab.agent.data import note_checks
from framelab.agent.rewards import agent_checks_reward, verdicts
from framelab.datamodules.special_tokens import PAD, VIDEO_PAD
from framelab.errors import UserError
from framelab.lightning_modules.agent import AgentModule
from framelab.rl.rollout import Rollout
from tests.agent.helpers import model
from tests.agent.test_guide import guided, tok  # noqa: F401  (the module's tokenizer fixture)


def expert_texts(tok, max_turns: int = 5):
    """(meta with the video's size, decoded completion) of the guided check-note episodes."""
    m = model(tok)
    out = []
    for index in range(12):
        ep, frames, g = guided(tok, m, index, max_turns=max_turns, note_form="checks")
        if g is not None and g.videos:
            video = {"frames": int(frames.shape[0]), "fps": ep["fps"], "max_turns": max_turns}
            meta = {**ep["meta"], "video": video}
            out.append((meta, tok.decode(g.completion, skip_special_tokens=False)))
    return out


def test_the_experts_verdicts_are_all_right_and_each_wrong_one_costs_its_share(tok):
    episodes = expert_texts(tok)
    assert {m["format"] for m, _ in episodes} == {"span", "mcq"}
    for meta, text in episodes:
        right, asked = verdicts(text, meta)
        assert asked > 0 and right == asked and agent_checks_reward(text, meta) == 1.0, text
        first = text.index(" yes") if " yes" in text else text.index(" no")
        flipped = text[:first] + (" no" if text[first:].startswith(" yes") else " yes") + \
            text[first + (4 if text[first:].startswith(" yes") else 3):]
        assert verdicts(flipped, meta) == (asked - 1, asked), flipped
        note = text[text.index("check: "):text.index("<tool_call>", text.index("check: "))]
        dropped = text.replace(note, "", 1)                 # a zoom with no note after it
        per_zoom = len(note_checks(note))
        assert verdicts(dropped, meta) == (asked - per_zoom, asked), dropped


def test_no_verdict_is_asked_after_a_zoom_the_forced_finish_follows(tok):
    episodes = expert_texts(tok, max_turns=3)           # search, zoom, forced finish
    assert episodes
    for meta, text in episodes:
        assert verdicts(text, meta) == (0, 0) and agent_checks_reward(text, meta) == 0.0, text


def test_a_meta_without_the_videos_size_is_one_error_line(tok):
    meta, text = expert_texts(tok)[0]
    meta.pop("video")
    with pytest.raises(UserError, match="meta\\['video'\\]"):
        agent_checks_reward(text, meta)


def test_each_verdict_is_credited_on_the_tokens_that_wrote_it(tok):
    """`agent.verdict_credit`: each item's tokens get w * (right - the batch's share of right
    items); a flipped verdict's tokens are pushed down, every other item's are pushed up, a note
    left out is charged its items at the first token of its turn, and no other token gets
    anything."""
    pad = {VIDEO_PAD: tok.token_to_id(VIDEO_PAD), PAD: tok.token_to_id(PAD)}
    host = SimpleNamespace(agent_cfg={"verdict_credit": 0.5}, tokens=pad, tokenizer=tok,
                           log=lambda *a, **k: None)
    encode = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
    for meta, text in expert_texts(tok)[:4]:
        clean = tok.decode([t for t in encode(text) if t not in pad.values()],
                           skip_special_tokens=False)
        first = clean.index(" yes") if " yes" in clean else clean.index(" no")
        word = " yes" if clean[first:].startswith(" yes") else " no"
        flipped = clean[:first] + (" no" if word == " yes" else " yes") + clean[first + len(word):]
        at = clean.index("check: ")
        note = clean[at:clean.index("<tool_call>", at)]
        dropped = clean.replace(note, "", 1)            # the first note left out
        texts = [clean, flipped, dropped]
        comps = [encode(t) for t in texts]
        ro = Rollout([[]] * 3, [[]] * 3, comps, [[True] * len(c) for c in comps],
                     [[0.0] * len(c) for c in comps], [True] * 3, [False] * 3, [1] * 3, [0] * 3, 3,
                     {"text": texts, "doc": [{"meta": meta}] * 3})
        bonus = AgentModule.token_bonus(host, ro)
        asked, missing = verdicts(clean, meta)[1], len(note_checks(note))
        base = (3 * asked - 1 - missing) / (3 * asked)
        up, down = 0.5 * (1 - base), -0.5 * base
        values = lambda b: {round(x, 6) for x in b}  # noqa: E731
        assert values(bonus[0]) == {0.0, round(up, 6)}, bonus[0]
        others = {round(up, 6)} if asked > 1 else set()         # the items left right
        assert values(bonus[1]) == {0.0, round(down, 6)} | others, bonus[1]
        texts_at = lambda c, b, v: "".join(tok.decode([t], skip_special_tokens=False)  # noqa: E731
                                           for t, x in zip(c, b) if abs(x - v) < 1e-9)
        right = texts_at(comps[0], bonus[0], up)
        assert right.count("yes") + right.count("no") == asked, right
        wrong = texts_at(comps[1], bonus[1], down)
        assert wrong.strip().endswith(("yes", "no")) and "," not in wrong, wrong
        assert wrong in flipped, wrong
        charged = [i for i, x in enumerate(bonus[2]) if abs(x - missing * down) < 1e-9]
        assert len(charged) == 1, bonus[2]
        before = tok.decode(comps[2][:charged[0]], skip_special_tokens=False)
        assert before == dropped[:at], (before, dropped[:at])   # where the note would begin
