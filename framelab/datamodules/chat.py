"""Qwen-style chat template with vision placeholders and loss masks.

    <|im_start|>system\n{system}<|im_end|>\n            (only when a system prompt is given)
    <|im_start|>user\n{text, <video> -> vision block}<|im_end|>\n
    <|im_start|>assistant\n{reply}<|im_end|>\n

A vision block is <|vision_start|> + N x <|video_pad|> + <|vision_end|>, with
N = (T/2) * (H/p/2) * (W/p/2) for a video of T frames of H x W pixels, patch p, temporal patch 2
and 2x2 spatial merge (`vision_tokens`). With `video_layout="qwen3_vl"` a video is written as
Qwen3-VL's processor writes it: per temporal step (2 frames) `<{t:.1f} seconds>` + its own block of
N / (T/2) placeholders (`fill_vision` with the steps' timestamps). Labels are unshifted: an assistant reply and its closing
<|im_end|> carry loss (label = input id); everything else, including the assistant header, is -100.
"""
from __future__ import annotations

import re

from framelab.datamodules.special_tokens import (IM_END, IM_START, MEDIA_PLACEHOLDERS, VIDEO_PAD,
                                                 VISION_END, VISION_START)

IGNORE = -100
VIDEO_LAYOUTS = ("framelab", "qwen3_vl")
_MEDIA = re.compile("|".join(re.escape(p) for p in MEDIA_PLACEHOLDERS))


def vision_tokens(frames: int, height: int, width: int, patch: int) -> int:
    """Vision tokens of a (frames, height, width) video: temporal patch 2, spatial merge 2x2."""
    if frames % 2 or height % (2 * patch) or width % (2 * patch):
        raise ValueError(f"video of {frames} frames of {height}x{width} does not tile into "
                         f"2 frames x {2 * patch} x {2 * patch} pixels")
    return (frames // 2) * (height // patch // 2) * (width // patch // 2)


def normalise_messages(messages: list, videos: int) -> list:
    """Messages as [{"role", "content"}] with exactly `videos` placeholders: when a conversation has
    none, one per video is prepended to the first user turn. More placeholders than videos is an
    error (ValueError)."""
    out = [{"role": m["role"], "content": m["content"]} for m in messages]
    found = sum(len(_MEDIA.findall(m["content"])) for m in out)
    if found == 0 and videos:
        first = next((m for m in out if m["role"] == "user"), None)
        if first is None:
            raise ValueError("conversation has no user turn to attach its video to")
        first["content"] = "<video>\n" * videos + first["content"]
    elif found != videos:
        raise ValueError(f"conversation has {found} media placeholders but the sample has {videos} video(s)")
    return out


class ChatEncoder:
    """Turns conversations into (input_ids, labels) with a given `tokenizers.Tokenizer`."""

    def __init__(self, tokenizer, system_prompt: str | None = None, video_layout: str = "framelab"):
        if video_layout not in VIDEO_LAYOUTS:
            raise ValueError(f"video layout {video_layout!r}: expected one of {VIDEO_LAYOUTS}")
        self.video_layout = video_layout
        self.tok = tokenizer
        self.system_prompt = system_prompt
        self.im_start = tokenizer.token_to_id(IM_START)
        self.im_end = tokenizer.token_to_id(IM_END)
        self.vstart = tokenizer.token_to_id(VISION_START)
        self.vend = tokenizer.token_to_id(VISION_END)
        self.vpad = tokenizer.token_to_id(VIDEO_PAD)
        self.newline = self._text("\n")
        self._header_cache: dict[str, list[int]] = {}
        self._piece_cache: dict[str, list[int]] = {}   # text piece -> ids (prompts repeat)

    def _text(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids if text else []

    def _header(self, role: str) -> list[int]:
        if role not in self._header_cache:
            self._header_cache[role] = [self.im_start] + self._text(f"{role}\n")
        return self._header_cache[role]

    def _pieces(self, messages: list) -> list[list[int]]:
        """Token ids of every text piece (split at media placeholders) of every message; pieces
        not seen before are encoded in one batch call and remembered (a bounded cache: system
        prompts, questions and options recur across samples)."""
        texts = [piece for m in messages for piece in _MEDIA.split(m["content"])]
        cache = self._piece_cache
        new = list(dict.fromkeys(t for t in texts if t not in cache))
        if new:
            if len(cache) + len(new) > 65536:
                cache.clear()
            for text, e in zip(new, self.tok.encode_batch(new, add_special_tokens=False)):
                cache[text] = e.ids
        return [cache[t] for t in texts]

    def encode(self, messages: list, vision_counts: list[int],
               add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of a conversation whose placeholders get `vision_counts` tokens each,
        in order. With add_generation_prompt the assistant header is appended (for generation)."""
        counts = list(vision_counts)
        if self.video_layout == "qwen3_vl" and any(counts):
            raise ValueError("the qwen3_vl video layout needs timestamps: encode with vision "
                             "counts of 0, then fill_vision(ids, labels, counts, timestamps)")
        messages = normalise_messages(messages, len(counts))
        if self.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}] + messages
        pieces = iter(self._pieces(messages))
        ids: list[int] = []
        labels: list[int] = []
        for m in messages:
            head = self._header(m["role"])
            body: list[int] = []
            for k in range(len(_MEDIA.findall(m["content"])) + 1):
                if k:
                    body += [self.vstart] + [self.vpad] * counts.pop(0) + [self.vend]
                body += next(pieces)
            body.append(self.im_end)
            ids += head + body + self.newline
            trained = m["role"] == "assistant"
            labels += [IGNORE] * len(head) + (body if trained else [IGNORE] * len(body))
            labels += [IGNORE] * len(self.newline)
        if add_generation_prompt:
            head = self._header("assistant")
            ids += head
            labels += [IGNORE] * len(head)
        return ids, labels

    def fill_vision(self, ids: list[int], labels: list[int], counts: list[int],
                    timestamps: list[list[float]] | None = None) -> tuple[list[int], list[int]]:
        """Give the empty vision blocks of an encoding made with counts of 0 their pad tokens:
        equal to encoding with `counts` directly, without tokenizing again. In the qwen3_vl
        layout block k becomes one timestamped block per entry of `timestamps[k]` (seconds of
        each temporal step), its `counts[k]` placeholders shared out equally."""
        out_ids: list[int] = []
        out_labels: list[int] = []
        last, k = 0, 0
        steps = self.video_layout == "qwen3_vl"
        if steps and (timestamps is None or len(timestamps) != len(counts)):
            raise ValueError("the qwen3_vl video layout needs each video's step timestamps")
        i = -1
        while True:
            try:
                i = ids.index(self.vstart, i + 1)
            except ValueError:
                break
            if k >= len(counts):
                raise ValueError(f"more vision blocks than the {len(counts)} videos")
            if steps:
                if i + 1 >= len(ids) or ids[i + 1] != self.vend:
                    raise ValueError("fill_vision takes an encoding made with vision counts of 0")
                block = self.step_blocks(counts[k], timestamps[k])
                out_ids += ids[last:i] + block          # replaces <|vision_start|><|vision_end|>
                out_labels += labels[last:i] + [IGNORE] * len(block)
                last = i + 2
            else:
                out_ids += ids[last:i + 1] + [self.vpad] * counts[k]
                out_labels += labels[last:i + 1] + [IGNORE] * counts[k]
                last = i + 1
            k += 1
        if k != len(counts):
            raise ValueError(f"{k} vision blocks for {len(counts)} videos")
        return out_ids + ids[last:], out_labels + labels[last:]

    def step_blocks(self, count: int, timestamps: list[float]) -> list[int]:
        """Qwen3-VL's tokens for one video of `count` placeholders over len(timestamps) steps."""
        n = len(timestamps)
        if n == 0 or count % n:
            raise ValueError(f"{count} vision tokens do not split over {n} temporal steps")
        out: list[int] = []
        for t in timestamps:
            out += self._text(f"<{t:.1f} seconds>") + [self.vstart] + [self.vpad] * (count // n)
            out.append(self.vend)
        return out
