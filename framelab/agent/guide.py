"""Guided samples for agentic RL: the expert's policy run on the agent's real tools.

The SFT expert (`framelab.agent.data`) reads an ideal search result: the needle's clip is listed
first, or second after a miss. At test time, and in RL rollouts, the agent reads the real index,
which lists the needle's clip at any rank or not at all. A guided sample is what the expert does
with the real result:

1. `search(query)` with the expert's query, run by the episode's `Toolbox` (the real index);
2. `zoom` on the listed spans in the order the index listed them, each turn after a zoom opening
   with the expert's note of what that zoom showed (ground truth, in the SFT data's note form);
3. once a note shows the asked object (the object for "when", any option for "what": the needle
   is the only option in the video), `finish` with the span it zoomed on ("when") or the letter.

When no listed span shows it before the turns run out, or a turn is longer than a rollout's
`max_new_tokens`, there is no guided sample (`None`): a policy could not have written it.

The tokens are the ones a rollout of the same calls produces (`framelab.rl.rollout` with
`framelab.lightning_modules.agent.rollout_tool`): the model's turns (notes and calls, as SFT
tokenises them) with loss mask 1, each tool result as `Renderer.result` renders it with loss
mask 0, and the forced `<tool_call>finish(` prefix after the second-to-last turn, masked too, after
which the answer is written without a note (as a policy would). `put_guides` puts one guided
sample in each group in place of the group's last policy sample; the module scores its
log-probabilities under the current policy (the behaviour log-probs, so the ratio starts at 1).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from framelab.agent.context import Renderer
from framelab.agent.data import WHAT_QUERY, asked_items, expert_note, visible
from framelab.agent.loop import FORCED
from framelab.agent.tools import Toolbox, zoom_indices
from framelab.datamodules.special_tokens import TOOL_CALL, TOOL_CALL_END
from framelab.rl.rollout import Rollout

_SPAN = re.compile(r"(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)")


@dataclass
class Guided:
    completion: list[int]
    loss_mask: list[bool]
    videos: list[torch.Tensor]      # the zooms' frames, in order
    turns: int                      # assistant turns (decode calls a rollout would make)


def listed_spans(text: str) -> list[tuple[str, str]]:
    """The spans of a search result (`"6.0-6.5, 3.8-4.2"`), as the text writes them."""
    return _SPAN.findall(text)


def guided_sample(r: Renderer, box: Toolbox, meta: dict, max_turns: int,
                  max_new_tokens: int | None = None, notes: bool = True,
                  note_form: str = "names") -> Guided | None:
    """The expert's episode on `box`'s tools (the module docstring), or None when the listed
    spans do not show the asked object within `max_turns` turns of `max_new_tokens` tokens."""
    when = meta.get("format") == "span"
    objects = meta["objects"]
    asked = asked_items(meta)            # the asked object ("when") or the four options ("what")
    n, fps = int(box.frames.shape[0]), box.fps
    ids: list[int] = []
    mask: list[bool] = []
    videos: list[torch.Tensor] = []
    calls = 0
    longest = 0

    def write(tokens: list[int], trained: bool) -> None:
        nonlocal longest
        ids.extend(tokens)
        mask.extend([trained] * len(tokens))
        if trained:
            longest = max(longest, len(tokens))

    def call(note: str, text: str):
        """Write a turn (note + call), run the call, read its result; returns (result, forced)."""
        nonlocal calls
        write(r.text(note) + r.call(text), True)
        res = box.run(text)
        calls += 1
        forced = calls + 1 >= max_turns
        then = [r.ids[TOOL_CALL]] + r.text(FORCED) if forced else None
        write(r.result(res.text, res.frames, then), False)
        if res.frames is not None:
            videos.append(res.frames)
        return res, forced

    found, forced = call("", f"search({asked[0][1] if when else WHAT_QUERY})")
    if found.error:
        return None
    note = ""                           # what the last zoom showed, written before the next call
    for a, b in listed_spans(found.text):
        if forced:                      # no turn left for a zoom and then an answer
            return None
        res, forced = call(note, f"zoom({a}, {b})")
        if res.error or res.span is None:
            return None
        shown = zoom_indices(n, fps, res.span[0], res.span[1], int(res.frames.shape[0])).tolist()
        note = ""
        if notes:
            note = expert_note(note_form, asked, objects, shown)
        hit = any(visible(objects, item, shown) for _, item in asked)
        if hit:
            answer = f"{a}-{b}" if when else meta["answer"]
            if forced:
                write(r.text(f"{answer})") + [r.ids[TOOL_CALL_END]], True)
            else:
                write(r.text(note) + r.call(f"finish({answer})"), True)
            if max_new_tokens is not None and longest > max_new_tokens:
                return None
            return Guided(ids, mask, videos, calls + 1)
    return None


def put_guides(ro: Rollout, prompt_videos: list[list[torch.Tensor]],
               guides: list[Guided | None]) -> list[int]:
    """Put `guides[k]` in place of group k's last sample (a group without one keeps its own);
    returns the indices replaced. Their log-probs are left to the caller (zeros until then)."""
    g, replaced = ro.group_size, []
    for k, s in enumerate(guides):
        if s is None:
            continue
        i = k * g + g - 1
        ro.completions[i], ro.loss_mask[i] = list(s.completion), list(s.loss_mask)
        ro.logprobs[i] = [0.0] * len(s.completion)
        ro.videos[i] = list(prompt_videos[k]) + list(s.videos)
        ro.finished[i], ro.truncated[i], ro.turns[i] = True, False, s.turns
        replaced.append(i)
    ro.extra["guided"] = [i in replaced for i in range(len(ro))]
    return replaced
