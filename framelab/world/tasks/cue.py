"""cue: a question about one small object in a cluttered scene, with its evidence recorded.

The target is the only small object of its shape; it is visible for a sub-span of the clip and is
drawn on top. meta.cue holds the privileged visual cue: the target's index, the frames where it is
visible and its box in each of them. `highlight` turns that cue into teacher-side frames (the
evidence region kept, the rest dimmed).
"""
from __future__ import annotations

import numpy as np

from framelab.world.physics import simulate
from framelab.world.render import boxes as all_boxes
from framelab.world.render import render
from framelab.world.scene import Obj, domain, make_objects, pick_pairs, rng_for
from framelab.world.tasks.common import Sample, ask, direction, ground_truth, sample_key, scene_meta
from framelab.world.vocab import COLOUR_NAMES, DIRECTIONS, SIZE_NAMES

DEFAULTS = {
    "frames": 8,
    "size": 48,           # clutter needs a few more pixels than describe
    "fps": 4.0,
    "min_clutter": 4,     # distractor objects
    "max_clutter": 8,
    "min_visible": 0.5,   # the target is visible for at least this fraction of the clip
    "mcq_prob": 0.5,
    "mcq_reply": "letter",  # multiple-choice reply: "letter" or "rationale" (see tasks.common)
}


def make(split: str, index: int, cfg: dict, render_frames: bool = True, world_seed: int = 0) -> Sample:
    cfg = {**DEFAULTS, **cfg}
    rng = rng_for("cue", split, index, world_seed)
    frames = int(cfg["frames"])
    dom = domain(split)
    n = 1 + int(rng.integers(cfg["min_clutter"], cfg["max_clutter"] + 1))
    pairs = pick_pairs(rng, n, dom, distinct=False)
    target_pair, clutter_pairs = pairs[0], pairs[1:]
    sizes = [SIZE_NAMES[1 + rng.integers(2)] if s == target_pair[0] else SIZE_NAMES[rng.integers(3)]
             for s, _ in clutter_pairs]
    objs: list[Obj] = make_objects(rng, clutter_pairs + [target_pair], dom, sizes + ["small"])
    ti = len(objs) - 1
    target = objs[ti]
    span = max(2, int(np.ceil(cfg["min_visible"] * frames)))
    length = int(rng.integers(span, frames + 1))
    target.t_in = int(rng.integers(0, frames - length + 1))
    target.t_out = target.t_in + length if target.t_in + length < frames else None
    traj = simulate(objs, frames)
    move = direction(traj, ti, target.t_in)
    if move is not None and rng.random() < 0.5:
        q = f"Is the small {target.shape} moving left, right, up or down when it first appears?"
        correct, pool, qtype = move, DIRECTIONS, "direction"
    else:
        q, correct, pool, qtype = f"What colour is the small {target.shape}?", target.colour, COLOUR_NAMES, "colour"
    conv, answer = ask(rng, q, correct, pool, cfg["mcq_prob"], mcq_reply=cfg["mcq_reply"])
    vis = np.flatnonzero(traj.visible[:, ti])
    bx = all_boxes(objs, traj)[vis, ti]
    cue = {"object": ti, "frames": vis.tolist(),
           "boxes": [[round(float(v), 4) for v in b] for b in bx]}
    meta = {"qtype": qtype, "target": ti, "cue": cue, **answer, **scene_meta(objs, traj)}
    return Sample(sample_key("cue", split, index), "cue", split, index, cfg["fps"], conv, meta,
                  render(objs, traj, cfg["size"]) if render_frames else None,
                  gt=ground_truth(objs, traj))


def highlight(frames: np.ndarray, cue: dict, dim: float = 0.25, margin: float = 0.05) -> np.ndarray:
    """Teacher view of a cue: frames outside cue.frames are dimmed entirely; in cue frames only the
    target's box (plus `margin`, in [0, 1] units) keeps full brightness."""
    out = (frames.astype(np.float32) * dim).astype(np.uint8)
    h, w = frames.shape[1:3]
    for t, (x0, y0, x1, y1) in zip(cue["frames"], cue["boxes"]):
        r0, r1 = max(int((y0 - margin) * h), 0), min(int(np.ceil((y1 + margin) * h)), h)
        c0, c1 = max(int((x0 - margin) * w), 0), min(int(np.ceil((x1 + margin) * w)), w)
        out[t, r0:r1, c0:c1] = frames[t, r0:r1, c0:c1]
    return out
