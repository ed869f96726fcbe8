"""Multiple-choice answer extraction, Video-MME style, and the accuracy built on it.

Video-MME's rule (from its public evaluation script, re-implemented): strip answer prefixes such as
"The best answer is", then take the first option letter; a reply of more than 10 words without a
letter is unanswered. Our one deviation, stated: the letter must stand alone ("A", "(A)", "A.",
"A: red"), so a capital inside a word ("Dog") is never read as option D.

Denominator: `ChoiceAccuracy` divides by *every* multiple-choice question asked — an unanswered
reply (None) counts as wrong; it also reports the answered fraction separately.
"""
from __future__ import annotations

import re

import torch
from torchmetrics import Metric

PREFIXES = ("the best answer is", "the correct answer is", "the answer is", "the answer",
            "the best option is", "the correct option is", "best answer:", "best option:",
            "answer:", "option:", "answer", "option")


def strip_prefix(s: str) -> str:
    """`s` without one leading answer prefix ("The answer is", "Answer:", ...), if it has one."""
    low = s.lower()
    for p in PREFIXES:
        if low.startswith(p):
            return s[len(p):].lstrip(" :.-\n\t")
    return s


def extract_choice(text: str | None, choices: str = "ABCD") -> str | None:
    """The option letter a reply chooses, or None when it names none."""
    if not text:
        return None
    s = strip_prefix(strip_prefix(text.strip()))   # "Answer: The answer is (B)" strips both
    letters = re.escape(choices)
    if len(s.split()) > 10 and not re.search(f"[{letters}]", s):
        return None
    m = re.search(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", s)
    return m.group(1) if m else None


def extract_named(text: str | None, choices: str = "ABCD") -> str | None:
    """The option text a "rationale" reply names before the letter it ends with ("Answer: red B"
    or "Answer: red (B)" -> "red"), or None when the reply does not end with a standalone letter
    after some text."""
    if not text:
        return None
    s = strip_prefix(text.strip())
    m = re.match(rf"(.*?)(?:\s+|\s*\()([{re.escape(choices)}])\)?\.?$", s)
    return m.group(1).strip() if m and m.group(1).strip() else None


class ChoiceAccuracy(Metric):
    """Accuracy over all multiple-choice questions (unanswered = wrong; see module docstring)."""

    full_state_update = False

    def __init__(self, choices: str = "ABCD", **kwargs):
        super().__init__(**kwargs)
        self.choices = choices
        self.add_state("correct", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("answered", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, replies: list[str], answers: list[str]) -> None:
        for reply, answer in zip(replies, answers):
            got = extract_choice(reply, self.choices)
            self.correct += float(got is not None and got == answer)
            self.answered += float(got is not None)
            self.total += 1.0

    def compute(self) -> torch.Tensor:
        return self.correct / self.total.clamp(min=1.0)

    def answered_rate(self) -> torch.Tensor:
        return self.answered / self.total.clamp(min=1.0)
