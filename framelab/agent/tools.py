"""The agent's tools: plain functions with typed signatures, and the parser of tool calls.

A call is written between `<tool_call>` and `</tool_call>` as `name(arg, arg, key=value)`
(strings unquoted or quoted) or as JSON `{"name": ..., "arguments": {...}}`. The tools:

- `search(query: str, k: int = 3) -> list[Span]`: the top-k time spans of the video, as text
  "a-b, c-d, ..." (seconds, one decimal), best first. Scoring, per clip (a window of about 1/16
  of the video, half-overlapping):
      score = novelty(clip) + text_weight * relevance(query, clip)
  - clip embeddings: the vision tower + projector's tokens of every frame pair (one per
    cell of 2p x 2p pixels), computed once per video (`VideoIndex`, in chunks of 64 frames; the
    tower attends within a frame pair, so the chunks change nothing);
  - novelty: how far the clip's cells lie from the same cells' median over the whole video (the
    L2 distance, summed over cells, averaged over the clip's frame pairs, divided by the largest
    clip's), i.e. "something here is not what this video usually shows" (what a needle is). The
    cells are the tower's own patch tokens (before the projector's merge), each channel
    standardised over the video, so no few large channels drown the rest.
    `features="pixels"` computes it on the merged cells' raw pixels instead: a diagnostic that
    separates what the tower perceives from what the policy does with it;
  - relevance: the largest cosine similarity of the clip's tokens to the query's embedding. The
    query is embedded with the LM's own input-embedding table (mean over its tokens): the space
    the projector maps vision tokens into. Nothing trains text and vision tokens to align in that
    space, so this term is weak unless a model learned it; it is 0 for an empty query.
  Spans overlapping a better one by more than half are skipped.
- `zoom(start_s: float, end_s: float, frames: int = 8) -> frames`: `frames` frames spread evenly
  over [start_s, end_s] (clamped to the video; 2..16), returned as an observation the model sees
  (a vision block inside the tool result), text "a-b".
- `memory_write(text: str)` -> "saved: text"; `memory_read()` -> every note, "; "-separated.
- `finish(answer: str)` -> ends the episode with `answer`.

A malformed call (unknown tool, bad arguments, no parenthesis, a span outside the video) gives
`ToolResult(error=...)`, rendered as "error: ... (expected ...)": the loop goes on.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

SIGNATURES = {
    "search": (("query", str, None), ("k", int, 3)),
    "zoom": (("start_s", float, None), ("end_s", float, None), ("frames", int, 8)),
    "memory_write": (("text", str, None),),
    "memory_read": (),
    "finish": (("answer", str, None),),
}
USAGE = ("search(query, k) | zoom(start_s, end_s, frames) | memory_write(text) | memory_read() "
         "| finish(answer)")
# error texts name no special token: written in a tool result, "<tool_call>" would become the
# token itself and read as a call
NO_CALL = f"error: no tool call (expected one of {USAGE} between the tool-call tokens)"
MAX_ZOOM_FRAMES = 16
FEATURES = ("tower", "pixels")
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)


class ToolError(ValueError):
    pass


@dataclass
class ToolResult:
    text: str
    frames: torch.Tensor | None = None
    answer: str | None = None          # set by finish
    error: bool = False
    span: tuple[float, float] | None = None   # a zoom's covered span (seconds)


def parse_call(text: str) -> tuple[str, dict]:
    """(tool name, typed arguments) of a call's text; ToolError says what is wrong."""
    text = text.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
            name, given = obj["name"], dict(obj.get("arguments") or {})
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ToolError(f"cannot read the JSON call {text[:40]!r}") from None
        positional, named = [], {str(k): str(v) for k, v in given.items()}
    else:
        m = _CALL.match(text)
        if not m:
            raise ToolError(f"cannot read {text[:40]!r}")
        name, inner = m.group(1), m.group(2)
        positional, named = [], {}
        for part in (_split_args(inner) if inner.strip() else []):
            key, eq, value = part.partition("=")
            if eq and re.fullmatch(r"\s*[A-Za-z_]\w*\s*", key):
                if key.strip() in named:
                    raise ToolError(f"{name}: {key.strip()} given twice")
                named[key.strip()] = value.strip()
            else:
                positional.append(part.strip())
    if name not in SIGNATURES:
        raise ToolError(f"unknown tool {name!r}")
    sig = SIGNATURES[name]
    if len(positional) > len(sig):
        raise ToolError(f"{name} takes {len(sig)} argument(s), got {len(positional)}")
    args = {}
    for (arg, kind, default), value in zip(sig, positional + [None] * len(sig)):
        if arg in named:
            if value is not None:
                raise ToolError(f"{name}: {arg} given twice")
            value = named.pop(arg)
        if value is None:
            if default is None:
                raise ToolError(f"{name}: missing {arg}")
            args[arg] = default
            continue
        value = value.strip().strip("\"'")
        try:
            args[arg] = kind(value)
        except ValueError:
            raise ToolError(f"{name}: {arg}={value!r} is not {kind.__name__}") from None
        if kind is float and not math.isfinite(args[arg]):
            raise ToolError(f"{name}: {arg}={value!r} is not a finite number")
    if named:
        raise ToolError(f"{name}: unknown argument(s) {sorted(named)}")
    return name, args


def _split_args(inner: str) -> list[str]:
    parts, depth, quote, cur = [], 0, None, ""
    for ch in inner:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return parts + [cur]


# ---- the index -------------------------------------------------------------------------------
@dataclass
class VideoIndex:
    """Clip embeddings of one video (see the module docstring), built once."""
    tokens: torch.Tensor          # (steps, cells, D) projected vision tokens, L2-normalised
    step_s: float                 # seconds per temporal step
    window: int                   # steps per clip
    stride: int
    novelty: torch.Tensor         # (clips,) in [0, 1]
    starts: list[int] = field(default_factory=list)

    @staticmethod
    @torch.no_grad()
    def build(model, frames: torch.Tensor, fps: float, chunk: int = 64,
              features: str = "tower") -> "VideoIndex":
        if features not in FEATURES:
            raise ToolError(f"index features {features!r}; choose one of {', '.join(FEATURES)}")
        vcfg = model.config.vision
        tp = vcfg.temporal_patch
        n = frames.shape[0] - frames.shape[0] % tp
        if n < tp:
            raise ToolError(f"a video of {frames.shape[0]} frames is too short to index")
        frames = frames[:n]
        steps = n // tp
        dtype = next(model.parameters()).dtype
        towers, feats = [], []
        for lo in range(0, n, chunk):
            clip = frames[lo:lo + chunk].to(dtype)
            for t in model.vision([clip]):
                towers.append(t)
                feats.append(model.projector(t))
        x = torch.cat(feats).float().reshape(steps, -1, feats[0].shape[-1])
        if features == "pixels":        # the same cells, as raw pixels (a diagnostic)
            cell = vcfg.patch_size * vcfg.merge
            h, w = frames.shape[2] // cell, frames.shape[3] // cell
            cells = frames.float().reshape(steps, tp, 3, h, cell, w, cell)
            cells = cells.permute(0, 3, 5, 1, 2, 4, 6).reshape(steps, h * w, -1)
        else:                           # the tower's patch tokens, each channel standardised
            t = torch.cat(towers).float().reshape(steps, -1, towers[0].shape[-1])
            mean = t.mean(dim=(0, 1), keepdim=True)
            cells = (t - mean) / t.std(dim=(0, 1), keepdim=True, correction=0).clamp(min=1e-6)
        window = max(1, round(steps / 16))
        stride = max(1, window // 2)
        starts = list(range(0, max(steps - window, 0) + 1, stride))
        if starts[-1] + window < steps:
            starts.append(steps - window)
        energy = (cells - cells.median(dim=0, keepdim=True).values).norm(dim=-1).sum(dim=1)
        novelty = torch.stack([energy[s:s + window].mean() for s in starts])
        novelty = novelty / novelty.max().clamp(min=1e-8)
        return VideoIndex(F.normalize(x, dim=-1), tp / fps, window, stride, novelty, starts)

    def relevance(self, query: torch.Tensor | None) -> torch.Tensor:
        if query is None:
            return torch.zeros_like(self.novelty)
        q = F.normalize(query.float(), dim=-1)
        per_step = (self.tokens @ q).max(dim=1).values
        return torch.stack([per_step[s:s + self.window].max() for s in self.starts])

    def span(self, clip: int) -> tuple[float, float]:
        s = self.starts[clip]
        return s * self.step_s, (s + self.window) * self.step_s


def embed_query(model, tokenizer, query: str) -> torch.Tensor | None:
    """The query's embedding: the mean of the LM's input embeddings of its tokens."""
    ids = tokenizer.encode(query, add_special_tokens=False).ids if query.strip() else []
    if not ids:
        return None
    table = model.lm.embed_tokens.weight
    return table[torch.tensor(ids, device=table.device)].mean(0).detach()


# ---- the tools ----------------------------------------------------------------------------------
def search(index: VideoIndex, query_embedding: torch.Tensor | None, k: int = 3,
           text_weight: float = 0.5) -> list[tuple[float, float]]:
    """Top-k spans (seconds), best first, overlapping a better one by at most half."""
    if not 1 <= k <= 10:
        raise ToolError(f"search: k={k} must be 1..10")
    score = index.novelty + text_weight * index.relevance(query_embedding)
    picked: list[int] = []
    for c in score.argsort(descending=True).tolist():
        s = index.starts[c]
        if all(abs(s - index.starts[p]) > index.window / 2 for p in picked):
            picked.append(c)
        if len(picked) == k:
            break
    return [index.span(c) for c in picked]


def zoom(frames: torch.Tensor, fps: float, start_s: float, end_s: float,
         count: int = 8) -> tuple[torch.Tensor, tuple[float, float]]:
    """`count` frames spread evenly over [start_s, end_s] and the span actually covered."""
    lo, hi = zoom_span(frames.shape[0] / fps, start_s, end_s, count)
    return frames[zoom_indices(frames.shape[0], fps, lo, hi, count)], (lo, hi)


def zoom_span(duration: float, start_s: float, end_s: float, count: int) -> tuple[float, float]:
    """The span (seconds) a zoom covers inside a video of `duration` s; ToolError for a zoom
    the tool refuses."""
    if not 2 <= count <= MAX_ZOOM_FRAMES:
        raise ToolError(f"zoom: frames={count} must be 2..{MAX_ZOOM_FRAMES}")
    if end_s <= start_s:
        raise ToolError(f"zoom: end_s={end_s} must be after start_s={start_s}")
    lo, hi = max(0.0, start_s), min(duration, end_s)
    if hi <= lo:
        raise ToolError(f"zoom: {start_s}-{end_s} is outside the video (0-{duration:.1f} s)")
    return lo, hi


def zoom_indices(frames: int, fps: float, lo: float, hi: float, count: int = 8) -> torch.Tensor:
    """The indices of the `count` frames `zoom` shows for [lo, hi] (seconds, inside the video)."""
    first = int(lo * fps)
    last = max(first, min(frames, math.ceil(hi * fps)) - 1)
    return torch.linspace(first, last, count).round().long()


def memory_write(memory: list[str], text: str) -> str:
    memory.append(text)
    return f"saved: {text}"


def memory_read(memory: list[str]) -> str:
    return "; ".join(memory) if memory else "empty"


def finish(answer: str) -> str:
    return answer.strip()


def fmt_spans(spans) -> str:
    return ", ".join(f"{a:.1f}-{b:.1f}" for a, b in spans)


class Toolbox:
    """The tools bound to one video (frames (T, C, H, W) in [0, 1], fps) and one model (for the
    index, built on the first search)."""

    def __init__(self, model, tokenizer, frames: torch.Tensor, fps: float, *, k: int = 3,
                 text_weight: float = 0.5, index: VideoIndex | None = None,
                 features: str = "tower"):
        self.model, self.tokenizer = model, tokenizer
        self.features = features
        self.frames, self.fps = frames, float(fps)
        self.k, self.text_weight = k, text_weight
        self.index = index
        self.memory: list[str] = []

    def get_index(self) -> VideoIndex:
        if self.index is None:
            self.index = VideoIndex.build(self.model, self.frames, self.fps,
                                          features=self.features)
        return self.index

    def run(self, call_text: str) -> ToolResult:
        """Run one call; a malformed call is an error result, never an exception."""
        try:
            name, args = parse_call(call_text)
            if name == "search":
                q = embed_query(self.model, self.tokenizer, args["query"])
                spans = search(self.get_index(), q, args["k"], self.text_weight)
                return ToolResult(fmt_spans(spans))
            if name == "zoom":
                clip, (lo, hi) = zoom(self.frames, self.fps, args["start_s"], args["end_s"],
                                      args["frames"])
                return ToolResult(f"{lo:.1f}-{hi:.1f}", frames=clip, span=(lo, hi))
            if name == "memory_write":
                return ToolResult(memory_write(self.memory, args["text"]))
            if name == "memory_read":
                return ToolResult(memory_read(self.memory))
            return ToolResult("done", answer=finish(args["answer"]))
        except ToolError as e:
            return ToolResult(f"error: {e} (expected {USAGE})", error=True)
