"""The MCR agent: tool parsing and malformed calls, the context's labels and budget, forced
finish, greedy determinism, the trajectory's data format, and masked tool results in RL."""
import numpy as np
import pytest
import torch

from framelab.agent.context import IGNORE, Context, Entry
from framelab.agent.data import as_tensor, episode, expert_trajectory
from framelab.agent.loop import AgentConfig, Trajectory, renderer_for, run_agent, split_call, \
    start_context
from framelab.agent.rewards import agent_answer_reward, agent_finish_reward, agent_turns_reward, \
    final_answer, finished
from framelab.agent.tools import Toolbox, ToolError, parse_call
from framelab.datamodules.special_tokens import TOOL_CALL, TOOL_CALL_END, TOOL_RESPONSE, \
    TOOL_RESPONSE_END
from framelab.lightning_modules.agent import rollout_tool
from framelab.rl.rollout import rollout
from tests.agent.helpers import model, script, tokenizer, video


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


def test_parse_call_forms():
    assert parse_call("search(red circle, 2)") == ("search", {"query": "red circle", "k": 2})
    assert parse_call("search(query='a, b')") == ("search", {"query": "a, b", "k": 3})
    assert parse_call(" zoom(1, 2.5) ") == ("zoom", {"start_s": 1.0, "end_s": 2.5, "frames": 8})
    assert parse_call('{"name": "finish", "arguments": {"answer": "B"}}') == \
        ("finish", {"answer": "B"})
    assert parse_call("memory_read()") == ("memory_read", {})
    for bad in ("zoom(", "fly(1)", "zoom(a, 2)", "zoom(1)", "search(x, 2, 3)", "finish(k=1)",
                "zoom(1, nan)", "{not json", "search(x, k=2, k=3)"):
        with pytest.raises(ToolError):
            parse_call(bad)


def test_malformed_calls_are_error_results_never_exceptions(tok):
    box = Toolbox(model(tok), tok, video(), fps=8.0)
    for bad in ("zoom(", "fly()", "zoom(3, 1)", "zoom(9, 10)", "zoom(0, 1, 40)", "search(x, 0)",
                "", "search(", "memory_write()"):
        r = box.run(bad)
        assert r.error and r.text.startswith("error:") and r.frames is None, bad
    z = box.run("zoom(1.0, 2.0, 4)")
    assert not z.error and z.frames.shape == (4, 3, 32, 32) and z.span == (1.0, 2.0)
    s = box.run("search(bright square, 2)")
    assert not s.error and s.text.count("-") == 2
    assert box.run("memory_write(seen at 1 s)").text == "saved: seen at 1 s"
    assert box.run("memory_read()").text == "seen at 1 s"
    assert box.run("finish( B )").answer == "B"


@pytest.mark.parametrize("features", ["tower", "pixels"])
def test_search_finds_the_only_novel_span(tok, features):
    box = Toolbox(model(tok), tok, video(64), fps=8.0, text_weight=0.0, features=features)
    first = box.run("search(anything, 1)").text            # the square is in frames 8..15: 1-2 s
    lo, hi = (float(x) for x in first.split("-"))
    assert lo < 2.0 and hi > 1.0, first


def test_expert_labels_cover_the_models_tokens_only(tok):
    m = model(tok)
    r = renderer_for(m, tok)
    ep = episode("train", 3, {"lengths": [64]})
    traj = expert_trajectory(ep, np.random.default_rng(0), miss_prob=1.0)
    out = traj.context(r, as_tensor(ep["frames"]), ep["fps"]).render(False, finished=True)
    trained = [t for t in out.labels if t != IGNORE]
    calls = [t.call for t in traj.turns]
    assert tok.decode(trained, skip_special_tokens=False) == \
        "".join(t.text for t in traj.turns) + "<|im_end|>"
    assert all(t.text.endswith(f"<tool_call>{c}</tool_call>") for t, c in zip(traj.turns, calls))
    inside, ids = False, out.ids                     # no label between the tool-response tokens
    for i, t in enumerate(ids):
        inside = (inside or t == r.ids[TOOL_RESPONSE]) and t != r.ids[TOOL_RESPONSE_END]
        assert not inside or out.labels[i] == IGNORE
    assert len(out.videos) == 1 + sum(1 for t in traj.turns if t.frames)


def test_expert_notes_say_what_each_zoom_showed():
    params = {"lengths": [512], "when_prob": 1.0}
    for i in range(4):
        ep = episode("train", i, params)
        needle = "{colour} {shape}".format(**ep["meta"]["objects"][0])
        traj = expert_trajectory(ep, np.random.default_rng(0), miss_prob=1.0)
        notes = [split_call(t.text)[0] for t in traj.turns]
        assert [t.call.split("(")[0] for t in traj.turns] == ["search", "zoom", "zoom", "finish"]
        assert notes[:2] == ["", ""]                 # nothing seen before the first zoom
        missed, hit = (n.removeprefix("seen: ").split(", ") for n in notes[2:])
        assert needle not in missed and needle in hit, (missed, hit)   # miss, then recover
        assert hit == sorted(hit) and set(missed) <= set(hit)          # order tells nothing
        plain = expert_trajectory(ep, np.random.default_rng(0), miss_prob=1.0, notes=False)
        assert [t.call for t in plain.turns] == [t.call for t in traj.turns]
        assert all(t.text.startswith("<tool_call>") for t in plain.turns)


def test_expert_check_notes_give_a_verdict_per_asked_object():
    from framelab.agent.data import note_checks
    from framelab.errors import UserError

    for qtype, when_prob in (("when", 1.0), ("what", 0.0)):
        for i in range(3):
            ep = episode("train", i, {"lengths": [512], "when_prob": when_prob})
            meta = ep["meta"]
            needle = "{colour} {shape}".format(**meta["objects"][0])
            traj = expert_trajectory(ep, np.random.default_rng(0), miss_prob=1.0,
                                     note_form="checks")
            missed, hit = (note_checks(split_call(t.text)[0]) for t in traj.turns[2:])
            asked = [needle] if qtype == "when" else meta["choices"]
            assert [n for n, _ in missed] == asked and [n for n, _ in hit] == asked
            assert not any(yes for _, yes in missed)                  # the miss: all no
            assert [n for n, yes in hit if yes] == [needle]               # the hit: the needle only
            if qtype == "what":
                letter = "ABCD"[meta["choices"].index(needle)]
                assert f"{letter} {needle} yes" in traj.turns[3].text
                assert traj.turns[3].call == f"finish({meta['answer']})" == f"finish({letter})"
    with pytest.raises(UserError, match="note_form"):
        expert_trajectory(ep, np.random.default_rng(0), note_form="list")


def test_both_notes_list_what_was_seen_then_judge_each_option_by_the_list():
    from framelab.agent.data import note_check_spans, note_checks
    from framelab.benchmarks.agent_notes import note_names

    for i in range(3):
        ep = episode("train", i, {"lengths": [512], "when_prob": 0.0})
        meta = ep["meta"]
        needle = "{colour} {shape}".format(**meta["objects"][0])
        traj = expert_trajectory(ep, np.random.default_rng(0), miss_prob=1.0, note_form="both")
        for turn in traj.turns[2:]:
            note = split_call(turn.text)[0]
            listed, checks = note_names(note), note_checks(note)
            assert note.startswith("seen: ") and "; check: A " in note
            assert [n for n, _ in checks] == meta["choices"]
            assert [n for n, yes in checks if yes] == [c for c in meta["choices"] if c in listed]
            for name, yes, a, b in note_check_spans(note):              # spans index the note
                assert note[a:b].endswith(f"{name} {'yes' if yes else 'no'}")
        assert needle not in note_names(split_call(traj.turns[2].text)[0])   # the miss
        assert needle in note_names(split_call(traj.turns[3].text)[0])       # the hit
        assert traj.turns[3].call == f"finish({meta['answer']})"
    assert note_checks("seen: red cross, blue ring") == []               # a list has no verdicts


def test_budget_drops_frames_then_results_and_keeps_memory(tok):
    r = renderer_for(model(tok), tok)
    ctx = Context(r, budget=None)
    ctx.add(Entry("instruction", "sys", role="system"))
    ctx.add(Entry("observation", frames=video(8)))
    ctx.add(Entry("instruction", "question?", role="user"))
    ctx.add(Entry("memory", "keep me"))
    for t in range(1, 4):
        ctx.add(Entry("tool_call", "zoom(1, 2)", turn=t))
        ctx.add(Entry("tool_result", "1.0-2.0 " * 5, frames=video(8), turn=t))
    full = len(ctx.render().ids)
    ctx.budget = full - 10
    out = ctx.render()
    assert len(out.ids) <= ctx.budget and 2 <= len(out.videos) < 4   # old zoom frames go first
    results = {e.turn: e for e in ctx.entries if e.kind == "tool_result"}
    assert results[1].frames is None and results[3].frames is not None and len(results) == 3
    ctx.budget = 10
    ctx.render()                                   # as small as the policy allows
    kinds = [(e.kind, e.turn) for e in ctx.entries]
    assert ("tool_result", 3) in kinds and ("tool_result", 1) not in kinds
    assert "keep me" in ctx.memory() and any(m.startswith("earlier:") for m in ctx.memory())
    assert sum(k == "tool_call" for k, _ in kinds) == 3


def test_forced_finish_on_the_last_turn_after_a_malformed_call(tok):
    m = model(tok)
    script(m, tok, [TOOL_CALL, "zoom(", TOOL_CALL_END, "B", ")", TOOL_CALL_END])
    traj = run_agent(m, tok, video(), 8.0, "Which?", AgentConfig(max_turns=2, max_new_tokens=8))
    assert len(traj.turns) == 2 and traj.turns[0].error and traj.turns[0].result.startswith("error")
    assert traj.turns[1].forced and traj.turns[1].call == "finish(B)" and traj.answer == "B"
    unscripted = run_agent(model(tok), tok, video(), 8.0, "Which?", AgentConfig(max_turns=1))
    assert unscripted.turns[0].forced and unscripted.turns[0].call.startswith("finish(")
    assert unscripted.answer is not None


def test_greedy_loop_is_deterministic_and_round_trips(tok):
    runs = [run_agent(model(tok), tok, video(), 8.0, "When?", AgentConfig(max_turns=3))
            for _ in range(2)]
    assert runs[0] == runs[1]
    m = model(tok)
    script(m, tok, [TOOL_CALL, "zoom(1.0, 2.5, 8)", TOOL_CALL_END, "1.0-2.0)", TOOL_CALL_END])
    traj = run_agent(m, tok, video(), 8.0, "When?", AgentConfig(max_turns=2), meta={"k": 1})
    assert traj.turns[0].frames == 8 and traj.turns[0].span == [1.0, 2.5]
    back = Trajectory.from_json(traj.to_json())
    assert back == traj and back.to_json() == traj.to_json()
    r = renderer_for(m, tok)
    again = back.context(r, video(), 8.0).render(False, finished=True)
    assert len(again.videos) == 2 and torch.equal(again.videos[1], video()[
        torch.linspace(8, 19, 8).round().long()])


def test_rl_rollout_masks_tool_results_and_the_forced_prefix(tok):
    m = model(tok)
    r = renderer_for(m, tok)
    frames = video()
    out = start_context(r, frames, "When is the square visible?", 8).render()
    sampled = script(m, tok, [TOOL_CALL, "zoom(1.0, 2.0)", TOOL_CALL_END, "1.0-2.0)", TOOL_CALL_END])
    box = Toolbox(m, tok, frames, 8.0)
    ro = rollout(m, [out.ids], [out.videos], 1, max_new_tokens=32, stop_tokens=[r.ids["<|im_end|>"]],
                 tool=lambda i, c: rollout_tool(r, box, box, c, 2), tool_stop=r.ids[TOOL_CALL_END],
                 max_turns=2)
    comp, mask = ro.completions[0], ro.loss_mask[0]
    assert [t for t, k in zip(comp, mask) if k] == sampled
    masked = [t for t, k in zip(comp, mask) if not k]
    assert r.ids[TOOL_RESPONSE] in masked and masked[-len(r.text("finish(")) - 1:] == \
        [r.ids[TOOL_CALL]] + r.text("finish(")
    assert len(ro.videos[0]) == 2 and ro.turns[0] == 2
    text = tok.decode(comp, skip_special_tokens=False)
    assert final_answer(text) == "1.0-2.0"
    assert agent_answer_reward(text, {"format": "span", "spans": [[1.0, 2.0]]}) == 1.0
    assert finished(text) and agent_finish_reward(text, {}) == 1.0


def test_an_episode_cut_off_mid_turn_neither_finishes_nor_scores():
    meta = {"format": "mcq", "answer": "B"}
    head = f"{TOOL_CALL}search(red, 3){TOOL_CALL_END}<|im_end|>\n<|im_start|>assistant\n"
    done = head + f"{TOOL_CALL}finish(B){TOOL_CALL_END}"
    plain = "Answer: red B<|im_end|>"
    for text, ok in ((done, True), (plain, True), (head + f"{TOOL_CALL}finish(B", False),
                     (head + "B B B B B", False), ("Answer: red B", False),
                     (head + f"{TOOL_CALL}zoom(1, 2){TOOL_CALL_END}", False)):
        assert finished(text) is ok, text
        assert agent_finish_reward(text, meta) == float(ok)
        assert agent_answer_reward(text, meta) == float(ok), text


def test_the_turn_cost_is_paid_by_right_answers_only():
    meta = {"format": "mcq", "answer": "B"}
    head = f"{TOOL_CALL}search(red, 3){TOOL_CALL_END}<|im_end|>\n<|im_start|>assistant\n"
    assert agent_turns_reward(head + f"{TOOL_CALL}finish(B){TOOL_CALL_END}", meta) == -2.0
    assert agent_turns_reward(head + f"{TOOL_CALL}finish(C){TOOL_CALL_END}", meta) == 0.0
    assert agent_turns_reward("Answer: red B<|im_end|>", meta) == 0.0


def test_error_texts_hold_no_special_token(tok):
    from framelab.agent.tools import NO_CALL
    box = Toolbox(model(tok), tok, video(), fps=8.0)
    specials = {tok.token_to_id(t) for t in (TOOL_CALL, TOOL_CALL_END, TOOL_RESPONSE,
                                              TOOL_RESPONSE_END)}
    for text in (NO_CALL, box.run("fly()").text, box.run("zoom(").text):
        assert not specials & set(tok.encode(text, add_special_tokens=False).ids), text


def test_commands_registered_and_bad_input_is_one_line(tmp_path, capsys):
    from framelab.benchmarks import available
    from framelab.cli import main
    assert "vniah" in available()
    assert main(["agent", "--ckpt", str(tmp_path / "none.ckpt"), "--world", "val:1"]) == 2
    assert main(["bench", "vniah", "--ckpt", "x", "--lengths", "64,abc"]) == 2
    bad = tmp_path / "bad.tar"
    bad.write_text("not a tar")
    from framelab.agent.command import read_shard
    from framelab.errors import UserError
    with pytest.raises(UserError):
        read_shard(str(bad), 0)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("framelab: error:") for line in err)


def test_note_scores_compare_names_with_the_zoom(tok):
    from framelab.benchmarks.agent_notes import report, score_note

    present = ["blue square", "red circle"]
    s = score_note("seen: blue circle, red circle", present, needle="red circle")
    assert s.pop("checks") != s["needle"]                              # nan: not a check note
    assert s == {"needle": 1.0, "listed": 1.0, "colour": 1.0, "shape": 1.0, "pair": 0.5,
                 "count": 1.0, "named": 2}
    s = score_note("seen: green ring", present, needle="red circle")
    assert (s["needle"], s["colour"], s["shape"], s["pair"], s["count"]) == (0, 0, 0, 0, 0)
    assert score_note("no note", present, "red circle")["named"] == 0
    s = score_note("check: A green ring no, B red circle yes, C blue circle yes", present,
                   needle="red circle")
    assert (s["needle"], s["pair"], s["named"]) == (1.0, 0.5, 2) and s["checks"] == 2 / 3
    assert s["count"] != s["count"] and s["listed"] != s["listed"]     # nan: not a list
    s = score_note("seen: blue square; check: A red circle no, B blue square yes", present,
                   needle="red circle")
    assert (s["needle"], s["listed"], s["pair"], s["checks"]) == (0.0, 0.0, 1.0, 0.5)
    out = report(model(tok), tok, questions=4, samples=2)
    assert sum(v["questions"] for v in out.values()) == 4
    assert all(0.0 <= v[k] <= 1.0 for v in out.values() for k in ("greedy", "sampled"))
    assert all(v[k] == "-" or 0.0 <= v[k] <= 1.0 for v in out.values() for k in ("pair", "checks"))
    assert all(v["if_named"] == "-" or 0.0 <= v["if_named"] <= 1.0 for v in out.values())
    miss = report(model(tok), tok, questions=4, samples=1, zoom="miss")
    assert all(0.0 <= v["zooms"] <= 1.0 for v in miss.values())
    assert all(v["zooms_if_unnamed"] == "-" or 0.0 <= v["zooms_if_unnamed"] <= 1.0
               for v in miss.values())


def test_lm_names_counts_the_needle_tokens_whose_hidden_state_names_its_pair():
    from types import SimpleNamespace

    from framelab.benchmarks.agent_notes import needle_named

    video_id, words = 99, torch.full((3, 9), -1)
    words[0, :8], words[1, :6] = torch.arange(8), torch.arange(8, 14)   # colour, shape word ids
    ids = [1, video_id, video_id, video_id, video_id, 2]
    labels = np.array([[2, 3, 0], [2, 3, 0], [5, 1, 0], [2, 3, 0]])     # needle: colour 2, shape 3
    hidden = torch.zeros(1, len(ids), 14)
    for slot, (c, s) in zip(range(1, 5), [(2, 3), (2, 4), (5, 1), (2, 3)]):
        hidden[0, slot, c], hidden[0, slot, 8 + s] = 1.0, 1.0           # what each token names
    model = SimpleNamespace(hidden_states=lambda i, v: hidden,
                            lm=SimpleNamespace(output_weight=torch.eye(14)))
    prompt = SimpleNamespace(ids=ids, videos=[])
    assert needle_named(model, prompt, words, labels, (2, 3), video_id) == pytest.approx(2 / 3)
    assert np.isnan(needle_named(model, prompt, words, labels, (7, 0), video_id))  # not shown


def test_a_forced_miss_zooms_away_from_the_needle_and_the_expert_goes_on():
    from framelab.benchmarks.agent_notes import PARAMS, forced_zoom
    from framelab.evaluation.temporal import parse_span, temporal_iou

    for i in range(6):
        ep = episode("test", i, PARAMS)
        truth = ep["meta"]["spans"]
        right, after_right = forced_zoom(ep, np.random.default_rng(i), "right")
        miss, after_miss = forced_zoom(ep, np.random.default_rng(i), "miss")
        assert temporal_iou(tuple(right.turns[-1].span), truth) > 0
        assert temporal_iou(tuple(miss.turns[-1].span), truth) == 0
        assert [t.call.split("(")[0] for t in miss.turns] == ["search", "zoom"]
        listed = [parse_span(x) for x in miss.turns[0].result.split(", ")]
        assert temporal_iou(listed[1], truth) > 0                  # the needle's span listed second
        assert "finish(" in after_right and "<tool_call>zoom(" in after_miss
