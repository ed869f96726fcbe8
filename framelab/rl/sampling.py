"""Dynamic sampling (DAPO): keep only groups that teach something, and sample until the batch is full.

A group whose G rewards are all equal has zero advantage everywhere (`group_advantages`): it adds no
gradient, only noise to the token-mean. `informative_groups(rewards, G, low, high)` keeps a group
when its rewards are not all equal and, with `low`/`high` given, when its accuracy (the mean of the
`accuracy` term, in [0, 1]) lies in [low, high] (Future-L1 keeps groups with accuracy in
[0.1, 0.9]).

`collect(roll, prompts, want, max_rounds, keep)` runs generation rounds over a pool of prompts:
each round rolls out the next `want` prompts not yet used, keeps the groups `keep` accepts, and
stops once `want` groups are kept, after `max_rounds` rounds, or when the pool is spent (then the
batch is smaller; the engine logs it). Without dynamic sampling it is one round, all kept.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def informative_groups(rewards: torch.Tensor, group_size: int, low: float | None = None,
                       high: float | None = None,
                       accuracy: torch.Tensor | None = None) -> torch.Tensor:
    """(groups,) bool: the group's rewards are not all equal (and its mean accuracy is in
    [low, high] when those are given; `accuracy` defaults to `rewards`)."""
    r = rewards.reshape(-1, group_size)
    keep = (r.max(1).values - r.min(1).values) > 1e-6
    if low is not None or high is not None:
        acc = (accuracy if accuracy is not None else rewards).reshape(-1, group_size).mean(1)
        keep &= (acc >= (low if low is not None else 0.0)) & (acc <= (high if high is not None
                                                                      else 1.0))
    return keep


def collect(roll: Callable, prompts: list, want: int, max_rounds: int,
            keep: Callable | None = None):
    """Round-by-round sampling; see the module docstring. `roll(prompts)` returns a result with
    `.select(groups)` and a `concat` static method (a `Rollout` plus its scores); `keep(result)`
    returns (groups,) bool, or None keeps all. Returns (result, stats) where stats counts
    `rounds`, `groups_sampled`, `groups_dropped`, `groups_kept`."""
    parts, kept, used, rounds, sampled = [], 0, 0, 0, 0
    while kept < want and rounds < max(1, max_rounds) and used < len(prompts):
        batch = prompts[used:used + want]
        used += len(batch)
        rounds += 1
        result = roll(batch)
        sampled += len(batch)
        mask = keep(result) if keep is not None else torch.ones(len(batch), dtype=torch.bool)
        groups = [i for i in torch.nonzero(mask).flatten().tolist()][:want - kept]
        if groups:
            parts.append(result.select(groups))
            kept += len(groups)
    stats = {"rounds": rounds, "groups_sampled": sampled, "groups_kept": kept,
             "groups_dropped": sampled - kept}
    return (type(parts[0]).concat(parts) if parts else None), stats
