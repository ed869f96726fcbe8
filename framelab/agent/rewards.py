"""The agent's rewards, registered with the RL engine (`framelab.rl.rewards`):

- `agent_answer`: the final answer (the argument of `finish(...)`, or a plain last reply) scored
  as the world scores a reply: the option letter for multiple choice, temporal IoU against the
  needle's span for "when", exact match for open questions; 0 without an answer, and 0 for an
  episode that did not finish (cut off by the token bounds mid-turn);
- `agent_finish`: 1 when the episode finished (its last turn is a `finish(...)` call closed by
  `</tool_call>`, or a plain reply closed by `<|im_end|>`), else 0. A format term: it keeps an
  episode cut off by the token bounds below every finished one. Without it (and with a turn cost
  paid by every episode) an episode that rambled until cut off paid nothing and outscored
  finished wrong ones, and agentic RL collapsed into rambling within 15 steps;
- `agent_turns`: minus the number of tool calls times the answer's score (with a small weight: a
  cost per turn, paid by episodes that answered right). A cost paid by every episode made RL drop
  the tools: in groups whose accuracy is mostly noise, the cost is the one consistent signal, and
  one seed went from 3.3 tool calls to 1 (no search) and lost half its accuracy. Charged on right
  answers only, it ranks right episodes by their turns and never pays a wrong one for not looking.

- `agent_checks` (off by default; `data.note_form=checks`): a process reward on the verdicts of
  the check notes, which the world can check. After each zoom the next turn's note should say
  yes or no on each asked object (the object for "when", every option for "what"); the reward is
  the share of those verdicts that are right against the objects the zoom's frames show, a
  missing verdict counting as wrong, and 0 for an episode that wrote none. A zoom on the turn
  before the last is not scored: the last turn opens with the forced `finish(`, with no room
  for a note. It reads the video's frame count and fps and the episode's `max_turns` from
  `meta["video"]`, which `AgentModule` adds to each rollout's metadata.

`verdict_tokens` locates the same verdicts at the tokens that wrote them, for the per-token
credit `module.agent.verdict_credit` (`AgentModule.token_bonus`).

All read the rollout's decoded completion, special tokens kept (`AgentModule.decode_text`).
"""
from __future__ import annotations

from typing import NamedTuple

from framelab.agent.data import asked_items, note_check_spans, visible
from framelab.agent.loop import answer_of, split_call
from framelab.agent.tools import ToolError, parse_call, zoom_indices, zoom_span
from framelab.datamodules.special_tokens import IM_END, IM_START, TOOL_CALL, TOOL_CALL_END
from framelab.errors import UserError
from framelab.evaluation.choice import extract_choice
from framelab.evaluation.temporal import parse_span, temporal_iou
from framelab.rl.rewards import accuracy_reward, register_reward


def final_answer(completion: str) -> str | None:
    """The answer an agent's completion ends with (see the module docstring), or None."""
    last = (completion or "").rsplit(f"{IM_START}assistant\n", 1)[-1]
    reasoning, call = split_call(last)
    if call is not None:
        return answer_of(call)
    return reasoning or None


def finished(completion: str) -> bool:
    """Whether an episode ended as an episode should: a closed `finish(...)` call, or a plain
    reply closed by `<|im_end|>` (not cut off by the token bounds)."""
    last = (completion or "").rsplit(f"{IM_START}assistant\n", 1)[-1].rstrip()
    if TOOL_CALL in last:
        _, call = split_call(last)
        return last.endswith(TOOL_CALL_END) and answer_of(call) is not None
    return last.endswith(IM_END)


@register_reward("agent_answer")
def agent_answer_reward(completion: str, meta: dict, *, length: int = 0) -> float:
    answer = final_answer(completion)
    if answer is None or not finished(completion):
        return 0.0
    return float(accuracy_reward(answer, meta))


@register_reward("agent_finish")
def agent_finish_reward(completion: str, meta: dict, *, length: int = 0) -> float:
    return float(finished(completion))


@register_reward("agent_turns")
def agent_turns_reward(completion: str, meta: dict, *, length: int = 0) -> float:
    calls = (completion or "").count(TOOL_CALL_END)
    return -float(calls) * agent_answer_reward(completion, meta)


def zoomed_frames(call: str | None, video: dict) -> list[int] | None:
    """The frame indices a zoom call showed (as `framelab.agent.tools.zoom` cuts them), or None
    for any other call and for a zoom the tool refused."""
    try:
        name, args = parse_call(call or "")
        if name != "zoom":
            return None
        n, fps = int(video["frames"]), float(video["fps"])
        lo, hi = zoom_span(n / fps, args["start_s"], args["end_s"], args["frames"])
    except ToolError:
        return None
    return zoom_indices(n, fps, lo, hi, args["frames"]).tolist()


class Check(NamedTuple):
    """One verdict `agent_checks` scores: the characters of the completion that hold it, whether
    the asked object is in the zoom's frames (`seen`, the right verdict), whether the note wrote
    a verdict on it, and whether that verdict is right (a verdict left out is wrong)."""
    span: tuple[int, int]
    seen: bool
    written: bool
    right: bool


def checked_items(completion: str, meta: dict) -> list[Check]:
    """Every verdict `agent_checks` scores (module docstring). A written item is held by its own
    characters (letter, name and verdict); an asked object the note left out (or a note not
    found verbatim in its turn), by the first character of the turn the note belongs to, where
    writing it was decided."""
    if "video" not in meta:
        raise UserError("the agent_checks reward needs the video's frame count, fps and "
                        "max_turns in the rollout's meta['video']; use it with experiment=agent_rl")
    sep = f"{IM_START}assistant\n"
    texts = (completion or "").split(sep)
    starts = [sum(len(t) + len(sep) for t in texts[:j]) for j in range(len(texts))]
    turns = [split_call(t) for t in texts]
    items = asked_items(meta)
    out = []
    for j, (_, call) in enumerate(turns[:-1]):
        shown = zoomed_frames(call, meta["video"])
        if shown is None or j + 1 >= int(meta["video"]["max_turns"]) - 1:
            continue
        note, turn = turns[j + 1][0], starts[j + 1]
        at = texts[j + 1].find(note) if note else -1
        said = {name: (verdict, a, b) for name, verdict, a, b in note_check_spans(note)}
        for _, name in items:
            seen = visible(meta["objects"], name, shown)
            if name not in said:
                out.append(Check((turn, turn + 1), seen, False, False))
                continue
            verdict, a, b = said[name]
            span = (turn + at + a, turn + at + b) if at >= 0 else (turn, turn + 1)
            out.append(Check(span, seen, True, verdict == seen))
    return out


def verdicts(completion: str, meta: dict) -> tuple[int, int]:
    """(right, asked) over the check notes written after the episode's zooms (module docstring)."""
    items = checked_items(completion, meta)
    return sum(c.right for c in items), len(items)


def verdict_tokens(pieces: list[str], completion: str, meta: dict) -> list[tuple[list[int], Check]]:
    """Per-token credit for the verdicts (`module.agent.verdict_credit`): each scored verdict with
    the indices of the tokens that hold it (`checked_items`: its own tokens, or for one the note
    left out the first token of its turn). `pieces` is each completion token's text, in order,
    and must join to `completion`."""
    if "".join(pieces) != completion:
        raise ValueError("the tokens' texts do not join to the completion")
    ends, at = [], 0
    for piece in pieces:
        at += len(piece)
        ends.append(at)
    return [([i for i, e in enumerate(ends) if e > c.span[0] and e - len(pieces[i]) < c.span[1]], c)
            for c in checked_items(completion, meta)]


@register_reward("agent_checks")
def agent_checks_reward(completion: str, meta: dict, *, length: int = 0) -> float:
    right, asked = verdicts(completion, meta)
    return right / asked if asked else 0.0


def score(answer: str | None, meta: dict) -> dict:
    """{"accuracy"} for multiple choice or {"tiou"} for "when", and "score" (either)."""
    if meta.get("format") == "span":
        v = temporal_iou(parse_span(answer), meta["spans"])
        return {"tiou": v, "score": v}
    v = float(extract_choice(answer) == meta.get("answer")) if answer else 0.0
    return {"accuracy": v, "score": v}
