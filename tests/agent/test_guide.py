"""Guided samples (framelab.agent.guide): the expert's episode on the real tools is token for token
the rollout that writes the same calls, it answers right, and it takes a group's last place."""
import pytest
import torch

from framelab.agent.data import as_tensor, episode
from framelab.agent.guide import guided_sample, listed_spans, put_guides
from framelab.agent.loop import renderer_for, start_context
from framelab.agent.rewards import agent_answer_reward
from framelab.agent.tools import Toolbox
from framelab.datamodules.special_tokens import IM_END, TOOL_CALL_END
from framelab.lightning_modules.agent import rollout_tool
from framelab.rl.rollout import rollout
from tests.agent.helpers import model, script, tokenizer

TURN = 96                 # tokens a turn (this test tokenizer spends more on a note than the world's)
PARAMS = {"lengths": [64, 128], "depths": [0.25, 0.75], "size": 32, "when_prob": 0.5}


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


def guided(tok, m, index: int, max_turns: int = 5, note_form: str = "names", turn: int = TURN):
    ep = episode("train", index, PARAMS)
    frames = as_tensor(ep["frames"])
    box = Toolbox(m, tok, frames, ep["fps"], features="pixels")
    return ep, frames, guided_sample(renderer_for(m, tok), box, ep["meta"], max_turns, turn,
                                     note_form=note_form)


def test_a_guided_sample_is_the_rollout_of_its_calls(tok):
    m = model(tok)
    r = renderer_for(m, tok)
    kinds, zooms = set(), []
    for index in range(12):
        ep, frames, g = guided(tok, m, index)
        if g is None:
            continue
        kinds.add(ep["meta"]["format"])
        zooms.append(len(g.videos))
        text = tok.decode(g.completion, skip_special_tokens=False)
        assert agent_answer_reward(text, ep["meta"]) > 0.0, text
        written = [t for t, k in zip(g.completion, g.loss_mask) if k]
        prompt = start_context(r, frames, ep["question"], 8).render()
        script(m, tok, [tok.id_to_token(t) for t in written])
        box = Toolbox(m, tok, frames, ep["fps"], features="pixels")
        ro = rollout(m, [prompt.ids], [prompt.videos], 1, max_new_tokens=TURN,
                     stop_tokens=[r.ids[IM_END]], tool=lambda i, c: rollout_tool(r, box, box, c, 5),
                     tool_stop=r.ids[TOOL_CALL_END], max_turns=5)
        assert ro.completions[0] == g.completion and ro.loss_mask[0] == g.loss_mask
        assert ro.turns[0] == g.turns and ro.finished[0]
        assert len(ro.videos[0]) == 1 + len(g.videos)
        assert all(torch.equal(a, b) for a, b in zip(ro.videos[0][1:], g.videos))
        del m.lm.logits                                   # back to the model's own head
    assert kinds == {"span", "mcq"} and zooms, (kinds, zooms)


def test_no_guide_without_turns_to_zoom_and_answer(tok):
    m = model(tok)
    found = [guided(tok, m, i, max_turns=5)[2] for i in range(6)]
    assert any(g is not None for g in found)
    assert all(guided(tok, m, i, max_turns=2)[2] is None for i in range(6))   # search, then forced
    assert all(guided(tok, m, i, turn=12)[2] is None for i in range(6))        # a note won't fit


def test_check_notes_in_guides(tok):
    m = model(tok)
    g = next(x[2] for x in (guided(tok, m, i, note_form="checks") for i in range(12))
             if x[2] is not None and len(x[2].videos) > 0)
    text = tok.decode(g.completion, skip_special_tokens=False)
    assert "check: " in text and "seen: " not in text


def test_guides_take_the_last_place_of_their_groups(tok):
    m = model(tok)
    ep, frames, g = next(x for x in (guided(tok, m, i) for i in range(12)) if x[2] is not None)
    r = renderer_for(m, tok)
    prompt = start_context(r, frames, ep["question"], 8).render()
    ro = rollout(m, [prompt.ids, prompt.ids], [prompt.videos, prompt.videos], 3,
                 max_new_tokens=4, stop_tokens=[r.ids[IM_END]])
    before = [list(c) for c in ro.completions]
    assert put_guides(ro, [prompt.videos, prompt.videos], [None, g]) == [5]
    assert ro.completions[:5] == before[:5] and ro.completions[5] == g.completion
    assert ro.extra["guided"] == [False] * 5 + [True] and ro.finished[5]
    assert len(ro.videos[5]) == len(prompt.videos) + len(g.videos)


def test_listed_spans_read_a_search_result():
    assert listed_spans("6.0-6.5, 3.8-4.2, 10.0-12.5") == [("6.0", "6.5"), ("3.8", "4.2"),
                                                           ("10.0", "12.5")]
    assert listed_spans("error: search: k=0 must be 1..10") == []
