"""Scoring a rollout's completions under a model: the teacher-forced forward pass of the RL update.

`pack(prompts, completions, videos)` puts the N sequences (prompt + completion) in N rows,
right-padded (causal attention: padding after a sequence never reaches it). One packed row with
`cu_seqlens` would waste no slots, but the attention of a row of N sequences costs (N L)^2 where
rows cost N L^2 (measured: 150 s vs a few seconds for 128 read questions on the CPU).
`completion_hidden(model, packed)` runs the model once and returns the final hidden state at every
position that predicts a completion token (M of them, in sample order). From those:
`token_logprobs(hidden, weight, packed, temperature)` gives log p of each completion token (logits
divided by the sampling temperature, as the behaviour log-probs were; `suppress_tokens` as in the
rollout) and, optionally, the entropy
of each position's distribution, as (N, T) tensors padded with 0 past each completion
(`packed.mask` marks the real tokens). The vocabulary projection runs in chunks of positions, so
(M, V) logits never exist at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packed:
    input_ids: torch.Tensor     # (N, L), right-padded
    videos: list[torch.Tensor]  # in order of their placeholder runs, row by row
    predict_at: torch.Tensor    # (M,) flat (row * L + column) slots predicting completion tokens
    targets: torch.Tensor       # (M,) the completion tokens
    mask: torch.Tensor          # (N, T) bool: real completion tokens (T = longest completion)

    def padded(self, values: torch.Tensor) -> torch.Tensor:
        """(M,) per-token values -> (N, T), zeros past each completion."""
        out = values.new_zeros(self.mask.shape)
        return out.masked_scatter(self.mask, values)


def pack(prompts: list[list[int]], completions: list[list[int]],
         videos: list[list[torch.Tensor]], device, pad_id: int = 0) -> Packed:
    """The N sequences prompt + completion as right-padded rows."""
    length = max(len(p) + len(c) for p, c in zip(prompts, completions))
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    predict_at, targets = [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, :len(p) + len(c)] = torch.tensor(list(p) + list(c), dtype=torch.long)
        start = i * length + len(p)
        predict_at += range(start - 1, start - 1 + len(c))
        targets += c
    width = max((len(c) for c in completions), default=0)
    mask = torch.zeros(len(completions), width, dtype=torch.bool)
    for i, c in enumerate(completions):
        mask[i, :len(c)] = True
    return Packed(input_ids=ids.to(device),
                  videos=[v.to(device) for vs in videos for v in vs],
                  predict_at=torch.tensor(predict_at, dtype=torch.long, device=device),
                  targets=torch.tensor(targets, dtype=torch.long, device=device),
                  mask=mask.to(device))


def completion_hidden(model, packed: Packed) -> torch.Tensor:
    """(M, D) final hidden states at the positions predicting completion tokens."""
    hidden = model.hidden_states(packed.input_ids, packed.videos or None)
    return hidden.reshape(-1, hidden.shape[-1])[packed.predict_at]


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, packed: Packed,
                   temperature: float = 1.0, entropy: bool = False, chunk_size: int = 2048,
                   suppress_tokens=()):
    """(logp (N, T), entropy (N, T) or None) of the completion tokens; see the module docstring.
    `suppress_tokens`: ids the rollout could not sample (their logits are -inf here too)."""
    t = temperature if temperature > 0 else 1.0
    suppress = torch.tensor(sorted(set(suppress_tokens)), dtype=torch.long, device=hidden.device)
    logps, ents = [], []
    for lo in range(0, hidden.shape[0], chunk_size):
        logits = (hidden[lo:lo + chunk_size] @ weight.T).float() / t
        if len(suppress):
            logits = logits.index_fill(-1, suppress, float("-inf"))
        logz = torch.logsumexp(logits, -1)
        logps.append(logits.gather(-1, packed.targets[lo:lo + chunk_size, None])[:, 0] - logz)
        if entropy:
            with torch.no_grad():
                probs = torch.softmax(logits, -1)
                ents.append(logz - (probs * logits.nan_to_num(neginf=0.0)).sum(-1))
    empty = hidden.new_zeros(0, dtype=torch.float32)
    logp = packed.padded(torch.cat(logps) if logps else empty)
    ent = packed.padded(torch.cat(ents) if ents else empty) if entropy else None
    return logp, ent
