"""The agent's one shared context: typed entries rendered into the chat template.

Entries (`Entry.kind`):

- `instruction`: the system prompt (what the tools are and how to call them) and the user's
  question;
- `observation`: frames the model sees (the overview of the video; a zoom's frames arrive inside
  a tool result);
- `reasoning`: text the model wrote before its tool call (`<think>…</think>` when it used them);
- `tool_call`: the model's call, between the registered `<tool_call>` / `</tool_call>` tokens;
- `tool_result`: what a tool returned, between `<tool_response>` / `</tool_response>`, as text
  and optionally frames;
- `memory`: notes the model wrote with `memory_write` (shown where they were written, in that
  tool's result, so the prefix a rollout has cached never changes) and summaries of dropped
  entries (shown in the system turn).

Rendering (`Context.render`) follows framelab's chat template
(`<|im_start|>role\\n…<|im_end|>\\n`):

    system    : the instruction, then "Memory:" and the summaries of dropped entries
    user      : the overview observation (a vision block) and the question
    assistant : reasoning + <tool_call>call</tool_call>
    user      : <tool_response>result [vision block]</tool_response>
    assistant : ...

so the tokens after a tool call, up to the next assistant header, are the tool result's: that is
exactly what a multi-turn rollout appends with loss mask 0 (`framelab.rl.rollout`). Entries the
model generated keep their sampled token ids (`Entry.ids`), so a re-rendered context is token for
token what the model saw; labels (SFT) are set on the model's own tokens only (reasoning, tool
calls, and the end-of-turn after `finish`), never on observations or tool results.

Token budget. When the rendered context exceeds `budget` tokens, entries are compacted oldest
first, in this order, until it fits:

1. the frames of old tool results (a zoom's vision block) are dropped, the text stays;
2. old tool results are dropped whole; a one-line memory summary of each is kept
   ("earlier: search(...) -> ...", first 60 characters);
3. old reasoning is dropped.

Never dropped: the instructions, the question and its overview, memory entries, tool calls (short,
and the trajectory's skeleton) and the newest turn. When even that does not fit, the context is
rendered over budget (the caller's `max_total` then decides).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from framelab.datamodules.special_tokens import (IM_END, IM_START, THINK, THINK_END, TOOL_CALL,
                                                 TOOL_CALL_END, TOOL_RESPONSE, TOOL_RESPONSE_END,
                                                 VIDEO_PAD, VISION_END, VISION_START)

KINDS = ("instruction", "observation", "reasoning", "tool_call", "tool_result", "memory")
IGNORE = -100


@dataclass
class Entry:
    """One typed entry. `frames`: (T, C, H, W) in [0, 1] for observations and zoom results;
    `ids`: the sampled token ids of a generated entry (reasoning, tool call); `turn`: the
    assistant turn it belongs to (0 for the prompt)."""
    kind: str
    text: str = ""
    frames: torch.Tensor | None = None
    ids: list[int] | None = None
    turn: int = 0
    role: str = ""            # instruction: "system" or "user"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"entry kind {self.kind!r}; expected one of {', '.join(KINDS)}")


class Renderer:
    """Token ids of text and of the chat template's pieces, from a `tokenizers.Tokenizer` with
    framelab's special tokens; `vision_tokens(frames)` counts a video's placeholders."""

    def __init__(self, tokenizer, vision_tokens):
        self.tok = tokenizer
        self.vision_tokens = vision_tokens
        ids = {t: tokenizer.token_to_id(t) for t in (IM_START, IM_END, VISION_START, VISION_END,
                                                     VIDEO_PAD, TOOL_CALL, TOOL_CALL_END,
                                                     TOOL_RESPONSE, TOOL_RESPONSE_END, THINK,
                                                     THINK_END)}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        self.ids = ids
        self._cache: dict[str, list[int]] = {}

    def text(self, s: str) -> list[int]:
        if s not in self._cache:
            if len(self._cache) > 8192:
                self._cache.clear()
            self._cache[s] = self.tok.encode(s, add_special_tokens=False).ids if s else []
        return self._cache[s]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def header(self, role: str) -> list[int]:
        return [self.ids[IM_START]] + self.text(f"{role}\n")

    def end(self) -> list[int]:
        return [self.ids[IM_END]] + self.text("\n")

    def vision(self, frames: torch.Tensor) -> list[int]:
        return [self.ids[VISION_START]] + [self.ids[VIDEO_PAD]] * self.vision_tokens(frames) + \
            [self.ids[VISION_END]]

    def call(self, text: str) -> list[int]:
        """`<tool_call>text</tool_call>`."""
        return [self.ids[TOOL_CALL]] + self.text(text) + [self.ids[TOOL_CALL_END]]

    def result(self, text: str, frames: torch.Tensor | None,
               then: list[int] | None = None) -> list[int]:
        """The tokens a tool result adds after the call: end of the assistant turn, a user turn
        with `<tool_response>text[vision]</tool_response>`, the next assistant header, and `then`
        (e.g. a forced `finish(` prefix)."""
        body = [self.ids[TOOL_RESPONSE]] + self.text(text)
        if frames is not None:
            body += self.vision(frames)
        body += [self.ids[TOOL_RESPONSE_END]]
        return self.end() + self.header("user") + body + self.end() + self.header("assistant") + \
            list(then or [])


@dataclass
class Rendered:
    ids: list[int]
    labels: list[int]
    videos: list[torch.Tensor]


@dataclass
class Context:
    """The shared context (see the module docstring)."""
    renderer: Renderer
    budget: int | None = None
    entries: list[Entry] = field(default_factory=list)

    def add(self, entry: Entry) -> Entry:
        self.entries.append(entry)
        return entry

    def memory(self) -> list[str]:
        return [e.text for e in self.entries if e.kind == "memory"]

    @property
    def turns(self) -> int:
        return max([e.turn for e in self.entries], default=0)

    # ---- rendering --------------------------------------------------------------------------
    def render(self, generation_prompt: bool = True, finished: bool = False) -> Rendered:
        """ids, labels and videos of the context, compacted to the budget first. With
        `generation_prompt` the next assistant header ends it (the model writes next); with
        `finished` the last turn's end-of-turn is appended and trained (after `finish`)."""
        out = self._render(generation_prompt, finished)
        while self.budget is not None and len(out.ids) > self.budget and self.compact():
            out = self._render(generation_prompt, finished)
        return out

    def _render(self, generation_prompt: bool, finished: bool) -> Rendered:
        r = self.renderer
        ids: list[int] = []
        labels: list[int] = []
        videos: list[torch.Tensor] = []

        def put(tokens, trained=False):
            ids.extend(tokens)
            labels.extend(tokens if trained else [IGNORE] * len(tokens))

        system = [e for e in self.entries if e.kind == "instruction" and e.role == "system"]
        memory = [e.text for e in self.entries if e.kind == "memory" and e.turn == 0]
        if system or memory:
            text = "\n".join(e.text for e in system)
            if memory:
                text += ("\n" if text else "") + "Memory:\n" + "\n".join(f"- {m}" for m in memory)
            put(r.header("system") + r.text(text) + r.end())
        put(r.header("user"))
        for e in self.entries:
            if e.turn == 0 and e.kind == "observation":
                put(r.vision(e.frames) + r.text("\n"))
                videos.append(e.frames)
        question = [e.text for e in self.entries if e.kind == "instruction" and e.role != "system"]
        put(r.text("\n".join(question)) + r.end())
        last = self.turns
        for t in range(1, last + 1):
            put(r.header("assistant"))
            turn = [e for e in self.entries if e.turn == t]
            for e in turn:
                if e.kind == "reasoning":
                    put(e.ids if e.ids is not None else r.text(e.text), trained=True)
                elif e.kind == "tool_call":
                    put(e.ids if e.ids is not None else r.call(e.text), trained=True)
            results = [e for e in turn if e.kind == "tool_result"]
            if results:
                res = results[0]
                tail = r.result(res.text, res.frames)
                put(tail[:-len(r.header("assistant"))])      # the next header comes below
                if res.frames is not None:
                    videos.append(res.frames)
            elif t < last or finished:
                put(r.end()[:1], trained=finished and t == last)
                put(r.end()[1:])
        if generation_prompt and not finished:
            put(r.header("assistant"))
        return Rendered(ids, labels, videos)

    # ---- the budget -------------------------------------------------------------------------
    def compact(self) -> bool:
        """One compaction step (the policy in the module docstring); False when nothing is left
        to drop."""
        newest = self.turns
        old = [e for e in self.entries if 0 < e.turn < newest]
        for e in old:
            if e.kind == "tool_result" and e.frames is not None:
                e.frames = None
                e.text += " [frames dropped]"
                return True
        for e in old:
            if e.kind == "tool_result":
                call = next((c.text for c in self.entries
                             if c.kind == "tool_call" and c.turn == e.turn), "")
                self.entries.remove(e)
                self.entries.append(Entry("memory", f"earlier: {call[:40]} -> {e.text[:60]}",
                                          turn=0))
                return True
        for e in old:
            if e.kind == "reasoning":
                self.entries.remove(e)
                return True
        return False
