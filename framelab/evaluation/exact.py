"""Exact-match accuracy for open answers ("What colour is the circle?" -> "red").

Normalisation, applied to the reply and the reference alike before comparing them:
- outer whitespace is dropped and case is ignored ("Red " matches "red");
- one leading answer prefix is dropped ("Answer: red", "The answer is red"; the prefixes of
  `choice.strip_prefix`), only when it stands as a whole phrase before more text: "answering
  machine" keeps its first word, and a reply that is nothing but "Answer" stays "answer";
- one trailing period is dropped ("red." matches "red").
Nothing else is forgiven: "reddish" does not match "red", nor "2" "two". An empty reply never
matches.

`HitRate` is the fraction of questions answered right (correct / total) from per-question
booleans; `ExactMatch` is that rate with the hits decided here. Both keep sums only (DDP-reducible:
every state has dist_reduce_fx="sum").
"""
from __future__ import annotations

import torch
from torchmetrics import Metric

from framelab.evaluation.choice import strip_prefix


def normalize(text) -> str:
    """`text` as exact match compares it (see the module docstring)."""
    s = str(text or "").strip()
    rest = strip_prefix(s)
    consumed = s[:len(s) - len(rest)]
    if rest and consumed and not consumed[-1].isalnum():     # a whole prefix, then more text
        s = rest.strip()
    if s.endswith("."):
        s = s[:-1].rstrip()
    return s.lower()


def exact_match(reply, answer) -> bool:
    """Whether `reply` says `answer` exactly, after normalisation; an empty reply never does."""
    got = normalize(reply)
    return bool(got) and got == normalize(answer)


class HitRate(Metric):
    """Fraction of questions answered right, from one boolean per question."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("correct", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, hits) -> None:
        hits = [bool(h) for h in hits]
        self.correct += float(sum(hits))
        self.total += float(len(hits))

    def compute(self) -> torch.Tensor:
        return self.correct / self.total.clamp(min=1.0)


class ExactMatch(HitRate):
    """Exact-match accuracy of replies against reference answers."""

    def update(self, replies, answers) -> None:  # type: ignore[override]
        super().update([exact_match(r, a) for r, a in zip(replies, answers)])
