"""Rollouts: G sampled completions per prompt through the shared generation loop, with what the
RL losses need from the behaviour policy.

`rollout(model, prompts, videos, group_size, ...)` repeats each prompt G times (sample i belongs to
group i // G) and decodes them together with the KV cache (`framelab.models.generation.decode`).
Per sample it records the completion's token ids, the behaviour policy's log-probability of every
sampled token (log-softmax of the logits divided by the temperature, before top-k / top-p: the TRL
and verl convention), a loss mask, whether it ended at a stop token or was truncated, and how many
turns it took.

Multi-turn. With a `tool` callable, a sample that ends at `tool_stop` (e.g. `</tool_call>`) while it
has turns left gets `tool(i, completion_ids)` -> `(result_ids, result_videos)` or None (None: the
sample ends there). The result's tokens are appended to the completion with loss mask 0 and
log-prob 0 (TRL's `tool_mask`, verl's `response_mask`): they are read, never trained on. The
result's videos (e.g. frames a tool returned) are spliced in at their placeholders and kept with
the sample. Decoding then continues from the cache (`continue_generation`). Bounds: `max_turns`
(decode calls per sample), `max_new_tokens` (per turn), `max_total` (prompt + completion tokens;
a sample past it is cut there and marked truncated; a tool result that would not fit ends the
sample, truncated, without it).

The video placeholder is never sampled (`suppressed`); `framelab.rl.logprobs` scores with the same
suppression, so behaviour and teacher-forced log-probs agree.

`suppress_tokens`: ids never sampled besides the placeholder (Future-L1: `<|latent_pad|>`).
`step_hook` is passed to the generation loop (`framelab.models.generation`; Future-L1's latent
spans, `framelab.models.latent.LatentSpans`): one hook sees every decode call of the rollout.

Randomness comes only from `generator`: the same generator state gives the same rollouts (the RL
stages save it in the checkpoint, so a resumed run samples what the uninterrupted one did).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from framelab.models.generation import continue_generation, decode

Tool = Callable[[int, list[int]], "tuple[list[int], list[torch.Tensor]] | None"]


@dataclass
class Rollout:
    """N = prompts x G samples; sample i answers prompt `group[i]`."""
    prompts: list[list[int]]
    videos: list[list[torch.Tensor]]
    completions: list[list[int]]
    loss_mask: list[list[bool]]     # True on sampled tokens, False on tool results
    logprobs: list[list[float]]     # behaviour log-probs (0.0 on tool results)
    finished: list[bool]            # ended at a stop token
    truncated: list[bool]           # ran out of max_new_tokens or max_total
    turns: list[int]
    group: list[int]
    group_size: int
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.completions)

    @property
    def lengths(self) -> list[int]:
        """Sampled (loss-carrying) tokens per completion."""
        return [sum(m) for m in self.loss_mask]

    def select(self, groups: list[int]) -> "Rollout":
        """The samples of the given groups (in that order), renumbered 0..len(groups)-1."""
        g = self.group_size
        idx = [k * g + j for k in groups for j in range(g)]
        pick = lambda xs: [xs[i] for i in idx]   # noqa: E731
        return Rollout(pick(self.prompts), pick(self.videos), pick(self.completions),
                       pick(self.loss_mask), pick(self.logprobs), pick(self.finished),
                       pick(self.truncated), pick(self.turns),
                       [i // g for i in range(len(idx))], g,
                       {k: pick(v) for k, v in self.extra.items()})

    @staticmethod
    def concat(parts: list["Rollout"]) -> "Rollout":
        """Rollouts of several rounds as one (groups renumbered in order)."""
        g = parts[0].group_size
        out = Rollout([], [], [], [], [], [], [], [], [], g, {k: [] for k in parts[0].extra})
        for p in parts:
            base = len(out) // g
            for name in ("prompts", "videos", "completions", "loss_mask", "logprobs", "finished",
                         "truncated", "turns"):
                getattr(out, name).extend(getattr(p, name))
            out.group.extend(base + k for k in p.group)
            for k, v in p.extra.items():
                out.extra[k].extend(v)
        return out


@torch.no_grad()
def rollout(model, prompts: list[list[int]], videos: list[list[torch.Tensor]] | None,
            group_size: int, *, max_new_tokens: int, temperature: float = 1.0,
            top_k: int | None = None, top_p: float | None = None, stop_tokens=(),
            generator: torch.Generator | None = None, tool: Tool | None = None,
            tool_stop: int | None = None, max_turns: int = 1,
            max_total: int | None = None, step_hook=None, suppress_tokens=()) -> Rollout:
    """G = `group_size` samples for every prompt (see the module docstring)."""
    if group_size < 1 or max_turns < 1:
        raise ValueError(f"group_size={group_size} and max_turns={max_turns} must be at least 1")
    if tool is not None and tool_stop is None:
        raise ValueError("a tool needs tool_stop: the token id that ends a tool call")
    videos = videos if videos is not None else [[] for _ in prompts]
    rows = [list(p) for p in prompts for _ in range(group_size)]
    vids = [list(v) for v in videos for _ in range(group_size)]
    n = len(rows)
    stops = set(stop_tokens) | ({tool_stop} if tool is not None else set())
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, stop_tokens=sorted(stops),
                    generator=generator,
                    suppress_tokens=sorted(set(suppressed(model)) | set(suppress_tokens)))
    out = Rollout(rows, vids, [[] for _ in rows], [[] for _ in rows], [[] for _ in rows],
                  [False] * n, [False] * n, [0] * n, [i // group_size for i in range(n)],
                  group_size)
    gen = decode(model, rows, max_new_tokens, videos=vids, step_hook=step_hook, **sampling)
    live = list(range(n))
    for turn in range(max_turns):
        appended: list[list[int] | None] = [None] * n
        appended_videos: list[list[torch.Tensor]] = [[] for _ in range(n)]
        for i in live:
            toks = gen.tokens[i]
            out.completions[i] += toks
            out.loss_mask[i] += [True] * len(toks)
            out.logprobs[i] += gen.logprobs[i]
            out.turns[i] = turn + 1
            out.finished[i], out.truncated[i] = gen.finished[i], gen.truncated[i]
            if _cut(out, i, max_total):
                continue
            called = tool is not None and gen.finished[i] and toks and toks[-1] == tool_stop
            if not called or turn + 1 == max_turns:
                continue
            result = tool(i, list(out.completions[i]))
            if result is None:
                continue
            ids, result_videos = list(result[0]), list(result[1])
            if max_total is not None and \
                    len(out.prompts[i]) + len(out.completions[i]) + len(ids) >= max_total:
                out.finished[i], out.truncated[i] = False, True   # no room for the result
                continue
            out.completions[i] += ids
            out.loss_mask[i] += [False] * len(ids)
            out.logprobs[i] += [0.0] * len(ids)
            out.videos[i] = out.videos[i] + result_videos
            appended[i], appended_videos[i] = ids, result_videos
        live = [i for i in range(n) if appended[i] is not None]
        if not live:
            break
        gen = continue_generation(model, gen.state, appended, max_new_tokens,
                                  videos=appended_videos, step_hook=step_hook, **sampling)
    return out


def suppressed(model) -> list[int]:
    """Tokens a rollout never samples: a multimodal model's video placeholder (it stands for
    vision tokens, which a reply cannot produce)."""
    vid = getattr(model, "video_token_id", None)
    return [] if vid is None else [int(vid)]


def _cut(out: Rollout, i: int, max_total: int | None) -> bool:
    """Cut sample i at `max_total` prompt + completion tokens; True when it was cut."""
    if max_total is None:
        return False
    room = max_total - len(out.prompts[i])
    if len(out.completions[i]) <= room:
        return False
    for name in ("completions", "loss_mask", "logprobs"):
        getattr(out, name)[i] = getattr(out, name)[i][:max(room, 0)]
    out.finished[i], out.truncated[i] = False, True
    return True
