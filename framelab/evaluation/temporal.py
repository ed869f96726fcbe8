"""Temporal grounding: parse a predicted time span and score it by temporal IoU.

A "when" answer is read as the first two numbers of the reply ("3.5-6.0", "from 3.5 to 6 s");
a reply without two numbers scores IoU 0 (the denominator is every "when" question asked).
Against several reference spans the best IoU counts.
"""
from __future__ import annotations

import re

import torch
from torchmetrics import MeanMetric

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_span(text: str | None) -> tuple[float, float] | None:
    """(start, end) from the first two numbers of `text`, ordered; None if there are fewer."""
    nums = [float(n) for n in _NUMBER.findall(text or "")[:2]]
    if len(nums) < 2:
        return None
    return min(nums), max(nums)


def temporal_iou(pred: tuple[float, float] | None, spans) -> float:
    """Best IoU of `pred` with any reference span [(lo, hi), ...]; 0 when pred is None."""
    if pred is None:
        return 0.0
    best = 0.0
    for lo, hi in spans:
        inter = max(0.0, min(pred[1], hi) - max(pred[0], lo))
        union = max(pred[1], hi) - min(pred[0], lo)
        best = max(best, inter / union if union > 0 else float(pred == (lo, hi)))
    return best


class TemporalIoU(MeanMetric):
    """Mean temporal IoU over every "when" question (unparseable replies count 0)."""

    def update(self, replies: list[str], spans: list) -> None:  # type: ignore[override]
        scores = [temporal_iou(parse_span(r), s) for r, s in zip(replies, spans)]
        if scores:
            super().update(torch.tensor(scores, dtype=torch.float32))
