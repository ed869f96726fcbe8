"""Scene objects, per-split domains and deterministic seeding.

A sample is fully determined by (task, split, index): `rng_for` derives its random generator from
an integer seed that lies in a range owned by the split, so train / val / test / ood never share a
seed. Domains say which shape-colour pairs and which speeds a split may draw.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from framelab.world.vocab import IN_DOMAIN_PAIRS, OOD_PAIRS, SIZES, SIZE_NAMES

SPLITS = ("train", "val", "test", "ood")
SPLIT_STRIDE = 1_000_000_000  # samples per split: seeds of split s are [s * STRIDE, (s+1) * STRIDE)


def sample_seed(split: str, index: int) -> int:
    """The integer seed of sample `index` of `split`; the splits' seed ranges are disjoint."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if not 0 <= index < SPLIT_STRIDE:
        raise ValueError(f"sample index {index} outside [0, {SPLIT_STRIDE})")
    return SPLITS.index(split) * SPLIT_STRIDE + index


def rng_for(task: str, split: str, index: int, world_seed: int = 0) -> np.random.Generator:
    """Random generator of one sample: a pure function of (world_seed, task, split, index)."""
    return np.random.default_rng([world_seed, zlib.crc32(task.encode()), sample_seed(split, index)])


@dataclass
class Domain:
    """What a split may draw: `pairs` for ordinary objects, `query_pairs` for the object a question
    is about, and the speed range (world units per frame)."""
    pairs: tuple
    query_pairs: tuple
    speed: tuple[float, float]


def domain(split: str, speed_scale: float = 1.0) -> Domain:
    """In-domain splits use the seen pairs and normal speeds; `ood` asks about held-out pairs
    (other objects may be anything) and moves everything about twice as fast."""
    base = (0.008 * speed_scale, 0.022 * speed_scale)
    if split == "ood":
        return Domain(IN_DOMAIN_PAIRS + OOD_PAIRS, OOD_PAIRS, (base[1], base[1] * 2.0))
    return Domain(IN_DOMAIN_PAIRS, IN_DOMAIN_PAIRS, base)


@dataclass
class Obj:
    """One object: appearance, collision radius, initial position/velocity, visible span."""
    shape: str
    colour: str
    size: str
    pos: tuple[float, float]
    vel: tuple[float, float]
    t_in: int = 0              # first frame where visible
    t_out: int | None = None   # first frame where no longer visible (None: to the end)
    tags: dict = field(default_factory=dict)

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def describe(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "size": self.size,
                "t_in": self.t_in, "t_out": self.t_out}


def pick_pairs(rng: np.random.Generator, n: int, dom: Domain, distinct: bool = True) -> list:
    """n (shape, colour) pairs; the first comes from dom.query_pairs. With `distinct`, no two share
    a shape or a colour (so "the circle" and "the red object" name one object each)."""
    for _ in range(50):
        first = dom.query_pairs[rng.integers(len(dom.query_pairs))]
        chosen = [first]
        for i in rng.permutation(len(dom.pairs)):
            if len(chosen) == n:
                break
            s, c = dom.pairs[i]
            if (s, c) in chosen:
                continue
            if distinct and any(s == cs or c == cc for cs, cc in chosen):
                continue
            chosen.append((s, c))
        if len(chosen) == n:
            return chosen
    raise ValueError(f"cannot pick {n} distinct shape-colour pairs from this domain")


def random_velocity(rng: np.random.Generator, speed: tuple[float, float]) -> tuple[float, float]:
    angle = rng.uniform(0, 2 * np.pi)
    v = rng.uniform(*speed)
    return (float(v * np.cos(angle)), float(v * np.sin(angle)))


def place(rng: np.random.Generator, radius: float, others: list[Obj], tries: int = 100):
    """A position inside the walls that does not overlap `others` (best effort after `tries`)."""
    best, best_gap = None, -np.inf
    for _ in range(tries):
        p = rng.uniform(radius, 1 - radius, size=2)
        gap = min((np.hypot(*(p - np.array(o.pos))) - radius - o.radius for o in others),
                  default=np.inf)
        if gap > 0.01:
            return (float(p[0]), float(p[1]))
        if gap > best_gap:
            best, best_gap = p, gap
    return (float(best[0]), float(best[1]))


def make_objects(rng: np.random.Generator, pairs: list, dom: Domain, sizes=None) -> list[Obj]:
    """Objects for the given pairs with random sizes (or the given ones), positions and speeds."""
    objs: list[Obj] = []
    for i, (shape, colour) in enumerate(pairs):
        size = sizes[i] if sizes is not None else SIZE_NAMES[rng.integers(len(SIZE_NAMES))]
        obj = Obj(shape, colour, size, (0.5, 0.5), random_velocity(rng, dom.speed))
        obj.pos = place(rng, obj.radius, objs)
        objs.append(obj)
    return objs
