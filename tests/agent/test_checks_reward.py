"""The process reward on check-note verdicts (`agent_checks`, framelab.agent.rewards): the
expert's episode on the real tools earns 1, each wrong or missing verdict costs its share, the
zoom before the forced finish is not scored, and a rollout's meta must say the video's size."""
import pytest

from framelab.agent.data import note_checks
from framelab.agent.rewards import agent_checks_reward, verdicts
from framelab.errors import UserError
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
