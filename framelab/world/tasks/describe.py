"""describe: short clips and questions about colour, shape, count and motion direction.

Objects in a clip have pairwise distinct shapes and colours, so "the circle" or "the red object"
each name exactly one object. The object asked about is object 0 (drawn from the split's query
pairs; held-out pairs in the ood split).
"""
from __future__ import annotations

from framelab.world.physics import simulate
from framelab.world.render import render
from framelab.world.scene import domain, make_objects, pick_pairs, rng_for
from framelab.world.tasks.common import Sample, ask, direction, ground_truth, sample_key, scene_meta
from framelab.world.vocab import COLOUR_NAMES, DIRECTIONS, SHAPES

DEFAULTS = {
    "frames": 8,          # clip length
    "size": 32,           # rendered frame side (pixels)
    "fps": 4.0,           # nominal frame rate written to the metadata
    "min_objects": 1,
    "max_objects": 6,
    "mcq_prob": 0.5,      # probability of a multiple-choice question (else open answer)
}
QTYPES = ("colour", "shape", "count", "direction")


def make(split: str, index: int, cfg: dict, render_frames: bool = True, world_seed: int = 0) -> Sample:
    cfg = {**DEFAULTS, **cfg}
    rng = rng_for("describe", split, index, world_seed)
    dom = domain(split)
    n = int(rng.integers(cfg["min_objects"], cfg["max_objects"] + 1))
    objs = make_objects(rng, pick_pairs(rng, n, dom, distinct=True), dom)
    traj = simulate(objs, cfg["frames"])
    target = objs[0]
    qtype = QTYPES[rng.integers(len(QTYPES))]
    move = direction(traj, 0, 0)
    if qtype == "direction" and move is None:
        qtype = "colour"
    if qtype == "colour":
        q, correct, pool = f"What colour is the {target.shape}?", target.colour, COLOUR_NAMES
    elif qtype == "shape":
        q, correct, pool = f"What shape is the {target.colour} object?", target.shape, SHAPES
    elif qtype == "count":
        q, correct, pool = "How many objects are in the video?", str(n), [str(k) for k in range(1, 9)]
    else:
        q = f"At the start of the video, is the {target.name} moving left, right, up or down?"
        correct, pool = move, DIRECTIONS
    conv, answer = ask(rng, q, correct, pool, cfg["mcq_prob"])
    meta = {"qtype": qtype, "target": 0, **answer, **scene_meta(objs, traj)}
    return Sample(sample_key("describe", split, index), "describe", split, index, cfg["fps"], conv,
                  meta, render(objs, traj, cfg["size"]) if render_frames else None,
                  gt=ground_truth(objs, traj))
