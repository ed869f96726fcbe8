"""needle: long videos with one needle event (V-NIAH style) and questions about it.

The haystack is an ordinary scene; the needle is an extra object that is visible only for a short
span starting at depth d of the video (d = 0: first frame, d = 1: the span ends at the last frame).
Samples walk the grid lengths x depths in order (index mod grid size), so any contiguous run of
samples covers the heatmap evenly. Questions: "what" (multiple choice: which object appeared
briefly) and "when" (open: the time span in seconds, scored by temporal IoU against meta.spans).
"""
from __future__ import annotations

from framelab.world.physics import simulate
from framelab.world.render import render
from framelab.world.scene import domain, make_objects, pick_pairs, rng_for
from framelab.world.tasks.common import Sample, ask, ground_truth, sample_key, scene_meta
from framelab.world.vocab import ALL_PAIRS

DEFAULTS = {
    "lengths": [64, 128, 256],                  # haystack lengths in frames (64 to 2048)
    "depths": [0.0, 0.25, 0.5, 0.75, 1.0],      # needle depths
    "size": 32,
    "fps": 8.0,
    "min_objects": 1,                           # haystack objects
    "max_objects": 4,
    "needle_frames": 0,                         # needle span; 0 = max(4, length // 16)
    "when_prob": 0.5,                           # probability of a "when" question
    "mcq_reply": "letter",                      # "letter" or "rationale" (see tasks.common)
}


def grid_point(index: int, lengths: list, depths: list) -> tuple[int, float]:
    cell = index % (len(lengths) * len(depths))
    return int(lengths[cell // len(depths)]), float(depths[cell % len(depths)])


def make(split: str, index: int, cfg: dict, render_frames: bool = True, world_seed: int = 0) -> Sample:
    cfg = {**DEFAULTS, **cfg}
    rng = rng_for("needle", split, index, world_seed)
    length, depth = grid_point(index, cfg["lengths"], cfg["depths"])
    span = int(cfg["needle_frames"]) or max(4, length // 16)
    if not 2 <= span < length:
        raise ValueError(f"needle span {span} does not fit a {length}-frame video")
    dom = domain(split)
    n = int(rng.integers(cfg["min_objects"], cfg["max_objects"] + 1))
    pairs = pick_pairs(rng, n + 1, dom, distinct=True)  # pairs[0] is the needle
    objs = make_objects(rng, pairs, dom)
    t0 = int(round(depth * (length - span)))
    needle = objs[0]
    needle.t_in, needle.t_out = t0, t0 + span
    traj = simulate(objs, length)
    fps = float(cfg["fps"])
    lo, hi = t0 / fps, (t0 + span) / fps
    if rng.random() < cfg["when_prob"]:
        q = (f"During which time span, in seconds, is the {needle.name} visible? "
             "Answer as start-end.")
        text = f"{lo:.1f}-{hi:.1f}"
        conv = [{"role": "user", "content": f"<video>\n{q}"}, {"role": "assistant", "content": text}]
        answer = {"format": "span", "answer": text, "answer_text": text, "choices": []}
        qtype = "when"
    else:
        absent = [f"{c} {s}" for s, c in ALL_PAIRS if (s, c) not in pairs]
        conv, answer = ask(rng, "Which object appears only briefly in the video?", needle.name,
                           absent, mcq_prob=1.0, mcq_reply=cfg["mcq_reply"])
        qtype = "what"
    meta = {"qtype": qtype, "target": 0, "length": length, "depth": depth,
            "needle_frames": [t0, t0 + span], "spans": [[lo, hi]], **answer, **scene_meta(objs, traj)}
    return Sample(sample_key("needle", split, index), "needle", split, index, fps, conv, meta,
                  render(objs, traj, cfg["size"]) if render_frames else None,
                  gt=ground_truth(objs, traj))
