"""Set partitions for SAR: which token positions are generated together, and in what order.

A partition of an image's N = h*w token positions is
- an *order*: a permutation of the positions, per sample (B, N), position order[b, i] is the
  i-th token generated for sample b;
- *set sizes*: K positive sizes summing to N, shared by the batch (so masks stay one tensor); the
  first sizes[0] tokens of the order form set 0, the next sizes[1] set 1, and so on.

Configurations are named like the paper, `order-K-interval`:
- order: `raster` (row-major), `random` (a fresh permutation per sample, as in MAR) or `custom`
  (a permutation the user gives, e.g. a spiral);
- K: the number of sets (= generation steps); `N` means one token per set;
- interval (how the N tokens are split into K sizes): `fixed` (as equal as possible; the remainder
  goes to the last sets), `cosine` (MAR's schedule: after step k, N*cos(pi/2 * (k+1)/K) tokens are
  still unknown, so early steps reveal few tokens and late steps many) or `random` (K - 1 cut
  points drawn uniformly without replacement from 1..N-1).
`raster-N-fixed` is an AR model, `random-1-fixed` one MAR-like set, `random-16-random` SAR-TS.
The paper does not say how `random` intervals are drawn nor how the cosine rounding is done: both
are the choices above.

For training, `PartitionSampler` draws one configuration per batch from a weighted list whose K
may be a range `lo..hi` (drawn log-uniformly: small and large step counts are equally likely,
our choice), so one model learns several orders and step counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from framelab.errors import UserError

ORDERS = ("raster", "random", "custom")
INTERVALS = ("fixed", "cosine", "random")


@dataclass
class Partition:
    order: torch.Tensor     # (B, N) long: positions in generation order
    sizes: list[int]        # K set sizes, summing to N

    @property
    def num_sets(self) -> int:
        return len(self.sizes)

    def set_ids(self, device=None) -> torch.Tensor:
        """(N,) long: the set of the i-th generated token (non-decreasing)."""
        sizes = torch.tensor(self.sizes, device=device or self.order.device)
        return torch.repeat_interleave(torch.arange(len(self.sizes), device=sizes.device), sizes)

    def bounds(self) -> list[tuple[int, int]]:
        """[(start, end)) of each set along the generation order."""
        out, start = [], 0
        for s in self.sizes:
            out.append((start, start + s))
            start += s
        return out


@dataclass(frozen=True)
class PartitionConfig:
    order: str
    num_sets: int | str      # an int, "N" (one token per set) or "lo..hi" (hi may be N)
    interval: str

    @property
    def name(self) -> str:
        return f"{self.order}-{self.num_sets}-{self.interval}"

    def resolve_sets(self, n: int, generator: torch.Generator | None = None) -> int:
        """The concrete K for an image of n tokens (draws from a range)."""
        k = self.num_sets
        if k == "N":
            return n
        if isinstance(k, str):
            lo, hi = k.split("..")
            lo, hi = int(lo), n if hi == "N" else min(int(hi), n)
            u = float(torch.rand((), generator=generator))
            k = int(round(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))))
        if not 1 <= k <= n:
            raise UserError(f"SAR partition {self.name}: {k} sets for {n} tokens; the number of "
                            f"sets must lie in 1..{n}")
        return k


def parse(name: str) -> PartitionConfig:
    """'random-16-random' -> PartitionConfig; K may also be 'N' or 'lo..hi'."""
    parts = str(name).split("-")
    if len(parts) != 3:
        raise UserError(f"SAR partition {name!r}: expected order-K-interval, e.g. raster-N-fixed "
                        "or random-16-random")
    order, k, interval = parts
    if order not in ORDERS:
        raise UserError(f"SAR partition {name!r}: order {order!r} is not one of {', '.join(ORDERS)}")
    if interval not in INTERVALS:
        raise UserError(f"SAR partition {name!r}: interval {interval!r} is not one of "
                        f"{', '.join(INTERVALS)}")
    if k != "N":
        try:
            if ".." in k:
                lo, hi = k.split("..")
                if not 1 <= int(lo) <= (int(lo) if hi == "N" else int(hi)):
                    raise ValueError
            else:
                k = int(k)
                if k < 1:
                    raise ValueError
        except ValueError:
            raise UserError(f"SAR partition {name!r}: K={k!r} must be a positive integer, N, or a "
                            "range lo..hi with 1 <= lo <= hi (hi may be N)") from None
    return PartitionConfig(order, k, interval)


# ---- set sizes -----------------------------------------------------------------------------

def interval_sizes(n: int, k: int, interval: str, generator: torch.Generator | None = None) -> list[int]:
    """K positive sizes summing to n, by the named interval rule."""
    if not 1 <= k <= n:
        raise UserError(f"SAR: {k} sets for {n} tokens; the number of sets must lie in 1..{n}")
    if interval == "fixed":
        base, extra = divmod(n, k)
        return [base + (1 if i >= k - extra else 0) for i in range(k)]
    if interval == "cosine":
        done = [0]
        for step in range(k):
            remaining = math.floor(n * math.cos(math.pi / 2 * (step + 1) / k))
            target = n - remaining
            # at least one new token per step, and leave one for each step still to come
            target = max(target, done[-1] + 1)
            target = min(target, n - (k - 1 - step))
            done.append(target)
        return [b - a for a, b in zip(done[:-1], done[1:])]
    if interval == "random":
        if k == 1:
            return [n]
        cuts = torch.randperm(n - 1, generator=generator)[: k - 1] + 1
        edges = [0, *sorted(int(c) for c in cuts), n]
        return [b - a for a, b in zip(edges[:-1], edges[1:])]
    raise UserError(f"SAR: interval {interval!r} is not one of {', '.join(INTERVALS)}")


# ---- orders --------------------------------------------------------------------------------

def make_order(kind: str, n: int, batch: int, generator: torch.Generator | None = None,
               custom: list[int] | torch.Tensor | None = None, device=None) -> torch.Tensor:
    """(batch, n) long: the generation order of the positions for each sample."""
    if kind == "raster":
        order = torch.arange(n).expand(batch, n)
    elif kind == "random":
        order = torch.stack([torch.randperm(n, generator=generator) for _ in range(batch)])
    elif kind == "custom":
        if custom is None:
            raise UserError("SAR order 'custom' needs a permutation of the token positions "
                            "(module.custom_order: a list of 0..N-1)")
        order = torch.as_tensor(custom, dtype=torch.long).flatten()
        if order.numel() != n or not torch.equal(order.sort().values, torch.arange(n)):
            raise UserError(f"SAR custom order: expected a permutation of 0..{n - 1}, got "
                            f"{order.numel()} entries that are not one")
        order = order.expand(batch, n)
    else:
        raise UserError(f"SAR: order {kind!r} is not one of {', '.join(ORDERS)}")
    return order.contiguous().to(device)


def make_partition(config: PartitionConfig | str, n: int, batch: int,
                   generator: torch.Generator | None = None, custom: list[int] | None = None,
                   device=None) -> Partition:
    config = parse(config) if isinstance(config, str) else config
    k = config.resolve_sets(n, generator)
    sizes = interval_sizes(n, k, config.interval, generator)
    return Partition(make_order(config.order, n, batch, generator, custom, device), sizes)


class PartitionSampler:
    """Draws one partition per batch from weighted configurations, e.g.
    [{"name": "random-1..64-random", "weight": 3}, {"name": "raster-N-fixed", "weight": 1}]."""

    def __init__(self, mix: list[dict] | list[str], custom_order: list[int] | None = None):
        if not mix:
            raise UserError("module.partitions is empty; give at least one order-K-interval name")
        entries = [m if isinstance(m, dict) else {"name": m} for m in mix]
        self.configs = [parse(e["name"]) for e in entries]
        weights = torch.tensor([float(e.get("weight", 1.0)) for e in entries])
        if (weights < 0).any() or weights.sum() <= 0:
            raise UserError("module.partitions: weights must be >= 0 and not all zero")
        self.weights = weights / weights.sum()
        self.custom_order = custom_order

    def sample(self, n: int, batch: int, generator: torch.Generator | None = None,
               device=None) -> Partition:
        idx = int(torch.multinomial(self.weights, 1, generator=generator))
        return make_partition(self.configs[idx], n, batch, generator, self.custom_order, device)
