"""The agent loop and its trajectory.

`run_agent(model, tokenizer, episode, cfg)`: the context starts with the instructions, an
overview of the video (`cfg.overview` frames sampled uniformly) and the question. Then, up to
`cfg.max_turns` times: render the context, generate until `</tool_call>` or `<|im_end|>`, parse the
call, run the tool (`framelab.agent.tools.Toolbox`), append the call and its result, repeat. On the
last turn the prompt ends with `<tool_call>finish(`: the model can only answer (forced finish). A
turn without a tool call that ended at `<|im_end|>` is taken as the answer; a malformed call gets
an error result and the loop goes on.

Each turn renders the whole context again (compacted to `cfg.budget`), so the budget policy of
`framelab.agent.context` applies between turns; the RL stage decodes the same layout with the KV
cache instead (`framelab.rl.rollout`, `rollout_tool`).

`Trajectory` is the loop's record as data: question, overview size, each turn's generated text,
parsed call, result text and (for a zoom) the span and frame count that reproduce its frames. It
round-trips through `to_dict` / `from_dict` (JSON-able), and `Trajectory.context(...)` rebuilds the
model's context from it: the SFT data renders synthesised trajectories through the same code.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch

from framelab.agent.context import Context, Entry, Renderer
from framelab.agent.tools import NO_CALL, ToolResult, Toolbox, parse_call, zoom
from framelab.datamodules.special_tokens import IM_END, TOOL_CALL, TOOL_CALL_END
from framelab.models.vision import video_token_count

SYSTEM = ("You answer questions about a long video. Tools: search(query, k) finds time spans; "
          "zoom(start_s, end_s, frames) shows frames of a span; memory_write(text); memory_read(); "
          "finish(answer) answers. Call one tool per turn as <tool_call>name(args)</tool_call>.")
FORCED = "finish("


@dataclass
class AgentConfig:
    max_turns: int = 5           # a search, two zooms, a note and an answer fit (agent.data)
    max_new_tokens: int = 64     # a turn: a note (a list of up to five objects, verdicts on
                                 # four options: at most 58 tokens with both) and a call
    overview: int = 8            # frames of the first observation
    zoom_frames: int = 8
    budget: int | None = 2048    # context tokens (framelab.agent.context's policy)
    temperature: float = 0.0     # 0: greedy
    k: int = 3
    text_weight: float = 0.5
    index: str = "tower"         # search features: tower (clip embeddings) | pixels (diagnostic)


@dataclass
class Turn:
    text: str                          # what the model wrote (special tokens kept)
    call: str | None = None            # the call's text, between the tool-call tokens
    result: str | None = None          # the tool result's text
    span: list[float] | None = None    # a zoom's covered span (seconds) ...
    frames: int = 0                    # ... and frame count (the frames are re-cut from the video)
    error: bool = False
    forced: bool = False


@dataclass
class Trajectory:
    question: str
    overview: int
    turns: list[Turn] = field(default_factory=list)
    answer: str | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Trajectory":
        return Trajectory(d["question"], int(d["overview"]), [Turn(**t) for t in d["turns"]],
                          d.get("answer"), dict(d.get("meta") or {}))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_json(s: str) -> "Trajectory":
        return Trajectory.from_dict(json.loads(s))

    def context(self, renderer: Renderer, frames: torch.Tensor, fps: float,
                budget: int | None = None) -> Context:
        """The context this trajectory leaves (zoom frames re-cut from `frames`)."""
        ctx = start_context(renderer, frames, self.question, self.overview, budget)
        for t, turn in enumerate(self.turns, 1):
            reasoning, _ = split_call(turn.text)
            if reasoning or turn.call is None:
                ctx.add(Entry("reasoning", reasoning, turn=t))
            if turn.call is not None:
                ctx.add(Entry("tool_call", turn.call, turn=t))
            if turn.result is not None:
                clip = None
                if turn.frames and turn.span:
                    clip = zoom(frames, fps, turn.span[0], turn.span[1], turn.frames)[0]
                ctx.add(Entry("tool_result", turn.result, frames=clip, turn=t))
        return ctx


def overview_frames(frames: torch.Tensor, n: int) -> torch.Tensor:
    """`n` frames sampled uniformly (segment centres) from the whole video."""
    total = frames.shape[0]
    n = max(1, min(n, total))
    idx = ((torch.arange(n) + 0.5) * total / n).long().clamp(max=total - 1)
    return frames[idx]


def start_context(renderer: Renderer, frames: torch.Tensor, question: str, overview: int,
                  budget: int | None = None) -> Context:
    ctx = Context(renderer, budget)
    ctx.add(Entry("instruction", SYSTEM, role="system"))
    ctx.add(Entry("observation", frames=overview_frames(frames, overview)))
    ctx.add(Entry("instruction", question, role="user"))
    return ctx


def renderer_for(model, tokenizer) -> Renderer:
    vcfg = model.config.vision
    return Renderer(tokenizer,
                    lambda f: video_token_count(f.shape[0], f.shape[2], f.shape[3], vcfg))


def split_call(text: str) -> tuple[str, str | None]:
    """(reasoning, call text or None) of a turn's text."""
    if TOOL_CALL not in text:
        return text.replace(IM_END, "").strip(), None
    before, _, rest = text.partition(TOOL_CALL)
    return before.strip(), rest.split(TOOL_CALL_END)[0].strip()


def answer_of(call: str | None) -> str | None:
    """The answer of a `finish(...)` call, leniently (a forced finish may miss its parenthesis)."""
    if call is None:
        return None
    try:
        name, args = parse_call(call)
        return args["answer"] if name == "finish" else None
    except ValueError:
        s = call.strip()
        if s.startswith(FORCED):
            return s[len(FORCED):].rstrip(")").strip()
        return None


@torch.no_grad()
def run_agent(model, tokenizer, frames: torch.Tensor, fps: float, question: str,
              cfg: AgentConfig | None = None, generator: torch.Generator | None = None,
              meta: dict | None = None, toolbox: Toolbox | None = None) -> Trajectory:
    """One episode (see the module docstring); `frames` (T, C, H, W) in [0, 1]."""
    from framelab.models.generation import decode
    from framelab.rl.rollout import suppressed

    cfg = cfg or AgentConfig()
    r = renderer_for(model, tokenizer)
    device = next(model.parameters()).device
    frames = frames.to(device)
    tools = toolbox or Toolbox(model, tokenizer, frames, fps, k=cfg.k, text_weight=cfg.text_weight,
                               features=cfg.index)
    traj = Trajectory(question, cfg.overview, meta=dict(meta or {}))
    ctx = start_context(r, frames, question, cfg.overview, cfg.budget)
    stops = [r.ids[TOOL_CALL_END], r.ids[IM_END]]
    for t in range(1, cfg.max_turns + 1):
        forced = t == cfg.max_turns
        prompt = ctx.render()
        prefix = [r.ids[TOOL_CALL]] + r.text(FORCED) if forced else []
        gen = decode(model, [prompt.ids + prefix], cfg.max_new_tokens, videos=[prompt.videos],
                     temperature=cfg.temperature, stop_tokens=stops, generator=generator,
                     suppress_tokens=suppressed(model))
        ids = prefix + gen.tokens[0]
        ended = gen.finished[0] and ids[-1] == r.ids[IM_END]      # a reply without a tool call
        if ended:
            ids = ids[:-1]
        text = r.decode(ids)
        reasoning, call = split_call(text)
        if forced and TOOL_CALL_END not in text:
            call = (call or FORCED) + ")" if not (call or "").endswith(")") else call
        turn = Turn(text, call, forced=forced)
        traj.turns.append(turn)
        cut = ids.index(r.ids[TOOL_CALL]) if r.ids[TOOL_CALL] in ids else len(ids)
        if reasoning or call is None:
            ctx.add(Entry("reasoning", reasoning, ids=ids[:cut], turn=t))
        if call is None:
            if ended:                                # a plain reply: the answer
                traj.answer = reasoning
                break
            result = ToolResult(NO_CALL, error=True)
        else:
            call_ids = ids[cut:] if TOOL_CALL_END in text else r.call(call)
            ctx.add(Entry("tool_call", call, ids=call_ids, turn=t))
            answer = answer_of(call)
            if answer is not None:
                traj.answer = answer
                break
            result = tools.run(call)
        turn.result, turn.error = result.text, result.error
        if result.frames is not None:
            turn.frames = int(result.frames.shape[0])
            turn.span = [float(x) for x in result.span]
        ctx.add(Entry("tool_result", result.text, frames=result.frames, turn=t))
    return traj
