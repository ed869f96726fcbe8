"""The agent's rewards, registered with the RL engine (`framelab.rl.rewards`):

- `agent_answer`: the final answer (the argument of `finish(...)`, or a plain last reply) scored
  as the world scores a reply: the option letter for multiple choice, temporal IoU against the
  needle's span for "when", exact match for open questions; 0 without an answer;
- `agent_turns`: minus the number of tool calls (with a small weight: a cost per turn).

Both read the rollout's decoded completion, special tokens kept (`AgentModule.decode_text`).
"""
from __future__ import annotations

from framelab.agent.loop import answer_of, split_call
from framelab.datamodules.special_tokens import IM_START, TOOL_CALL_END
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


@register_reward("agent_answer")
def agent_answer_reward(completion: str, meta: dict, *, length: int = 0) -> float:
    answer = final_answer(completion)
    return 0.0 if answer is None else float(accuracy_reward(answer, meta))


@register_reward("agent_turns")
def agent_turns_reward(completion: str, meta: dict, *, length: int = 0) -> float:
    return -float((completion or "").count(TOOL_CALL_END))


def score(answer: str | None, meta: dict) -> dict:
    """{"accuracy"} for multiple choice or {"tiou"} for "when", and "score" (either)."""
    if meta.get("format") == "span":
        v = temporal_iou(parse_span(answer), meta["spans"])
        return {"tiou": v, "score": v}
    v = float(extract_choice(answer) == meta.get("answer")) if answer else 0.0
    return {"accuracy": v, "score": v}
