"""The process reward on check-note verdicts (`agent_checks`, framelab.agent.rewards): the
expert's episode on the real tools earns 1, each wrong or missing verdict costs its share, the
zoom before the forced finish is not scored, and a rollout's meta must say the video's size;
with `agent.verdict_credit` each verdict is credited on its own tokens."""
from types import SimpleNamespace

import pytest

from framelab.agent.data import note_checks
from framelab.agent.rewards import agent_checks_reward, checked_items, verdict_tokens, \
    verdicts
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


def credit(tok, meta, texts, w=0.5):
    """AgentModule.token_bonus on one group of `texts` (episodes of one question)."""
    pad = {VIDEO_PAD: tok.token_to_id(VIDEO_PAD), PAD: tok.token_to_id(PAD)}
    host = SimpleNamespace(agent_cfg={"verdict_credit": w}, tokens=pad, tokenizer=tok,
                           log=lambda *a, **k: None)
    comps = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    n = len(texts)
    ro = Rollout([[]] * n, [[]] * n, comps, [[True] * len(c) for c in comps],
                 [[0.0] * len(c) for c in comps], [True] * n, [False] * n, [1] * n, [0] * n, n,
                 {"text": list(texts), "doc": [{"meta": meta}] * n})
    return comps, AgentModule.token_bonus(host, ro)


def clean_texts(tok):
    """(meta, completion without video placeholders) of the expert's check-note episodes."""
    pad = (tok.token_to_id(VIDEO_PAD), tok.token_to_id(PAD))
    return [(meta, tok.decode([t for t in tok.encode(text, add_special_tokens=False).ids
                               if t not in pad], skip_special_tokens=False))
            for meta, text in expert_texts(tok)]


def test_each_verdict_is_credited_on_the_tokens_that_wrote_it(tok):
    """`agent.verdict_credit`: a right verdict's tokens are pushed up, a flipped one's down, a
    note left out is charged at the first token of its turn, and no other token gets anything."""
    for meta, clean in clean_texts(tok)[:4]:
        first = clean.index(" yes") if " yes" in clean else clean.index(" no")
        word = " yes" if clean[first:].startswith(" yes") else " no"
        flipped = clean[:first] + (" no" if word == " yes" else " yes") + clean[first + len(word):]
        at = clean.index("check: ")
        dropped = clean.replace(clean[at:clean.index("<tool_call>", at)], "", 1)
        comps, bonus = credit(tok, meta, [clean, flipped, dropped])
        text_of = lambda c, b, keep: "".join(  # noqa: E731
            tok.decode([t], skip_special_tokens=False) for t, x in zip(c, b) if keep(x))
        right = text_of(comps[0], bonus[0], lambda x: x > 0)
        assert right.count("yes") + right.count("no") == verdicts(clean, meta)[1], right
        assert text_of(comps[0], bonus[0], lambda x: x < 0) == "", bonus[0]
        wrong = text_of(comps[1], bonus[1], lambda x: x < 0)
        assert wrong.strip().endswith(("yes", "no")) and "," not in wrong, wrong
        assert wrong in flipped, wrong
        charged = [i for i, x in enumerate(bonus[2]) if x < 0]
        assert len(charged) == 1, bonus[2]
        before = tok.decode(comps[2][:charged[0]], skip_special_tokens=False)
        assert before == dropped[:at], (before, dropped[:at])   # where the note would begin


def test_saying_no_to_everything_earns_no_net_credit(tok):
    """Verdicts on objects the zoom showed and on objects it did not weigh half each: a group
    that says no to every object is pushed down on the shown ones by as much as it is pushed up
    on the others, though most of its verdicts are right."""
    tested, kinds = 0, [0, 0]           # (verdicts on objects not shown, on objects shown)
    for meta, clean in clean_texts(tok):
        checks = checked_items(clean, meta)
        if not any(c.seen for c in checks) or all(c.seen for c in checks):
            continue
        all_no = clean.replace(" yes", " no")
        comps, bonus = credit(tok, meta, [all_no] * 2)
        pieces = [tok.decode([t], skip_special_tokens=False) for t in comps[0]]
        per_check = [(c, bonus[0][idx[-1]]) for idx, c in verdict_tokens(pieces, all_no, meta)]
        assert all((x < 0) == c.seen for c, x in per_check), per_check
        assert abs(sum(x for _, x in per_check)) < 1e-9, per_check
        kinds = [kinds[0] + sum(not c.seen for c in checks), kinds[1] + sum(c.seen for c in checks)]
        tested += 1
    assert tested and kinds[0] > kinds[1], (tested, kinds)      # no is the right verdict mostly
