"""future: observe a prefix, then answer about what happens after it.

The scene is simulated for observed + future frames; the video holds only the observed prefix and
the sample keeps the future frames (extra_frames["future"]) for latent-alignment training, plus a
textual hint of what happens next (meta.hint, for privileged-hint baselines). Questions about
object 0 (the query object): which wall it hits first after the clip, whether it collides with
another named object, and which quadrant it is in k frames after the clip.
"""
from __future__ import annotations

from framelab.world.physics import Trajectory, simulate
from framelab.world.render import render
from framelab.world.scene import domain, make_objects, pick_pairs, rng_for
from framelab.world.tasks.common import Sample, ask, ground_truth, sample_key, scene_meta
from framelab.world.vocab import REGIONS, WALLS, region_of

DEFAULTS = {
    "observed": 12,       # frames shown
    "future": 12,         # frames after the clip that questions may ask about
    "size": 32,
    "fps": 4.0,
    "min_objects": 2,
    "max_objects": 4,
    "mcq_prob": 0.5,
    "mcq_reply": "letter",  # multiple-choice reply: "letter" or "rationale" (see tasks.common)
}


def hint(objs, traj: Trajectory, observed: int) -> str:
    """One sentence per future event of object 0, then where it ends up."""
    t = objs[0]
    parts = []
    for e in traj.events:
        if e["t"] < observed or 0 not in e["objects"]:
            continue
        if e["type"] == "wall":
            parts.append(f"the {t.name} hits the {e['wall']} wall at frame {e['t']}")
        elif e["type"] == "collision":
            other = objs[e["objects"][1] if e["objects"][0] == 0 else e["objects"][0]]
            parts.append(f"the {t.name} collides with the {other.name} at frame {e['t']}")
    x, y = traj.pos[-1, 0]
    parts.append(f"the {t.name} ends in the {region_of(float(x), float(y))} region")
    return "After the clip, " + ", then ".join(parts) + "."


def make(split: str, index: int, cfg: dict, render_frames: bool = True, world_seed: int = 0) -> Sample:
    cfg = {**DEFAULTS, **cfg}
    rng = rng_for("future", split, index, world_seed)
    seen, ahead = int(cfg["observed"]), int(cfg["future"])
    dom = domain(split)
    n = int(rng.integers(cfg["min_objects"], cfg["max_objects"] + 1))
    objs = make_objects(rng, pick_pairs(rng, n, dom, distinct=True), dom)
    traj = simulate(objs, seen + ahead)
    target = objs[0]
    walls = traj.events_of("wall", 0, after=seen)
    qtypes = ["region", "collide"] + (["wall"] if walls else [])
    qtype = qtypes[rng.integers(len(qtypes))]
    if qtype == "wall":
        q = f"After the video ends, which wall will the {target.name} hit first?"
        correct, pool = walls[0]["wall"], WALLS
    elif qtype == "collide":
        hits = {e["objects"][1] for e in traj.events_of("collision", 0, after=seen) if e["objects"][0] == 0}
        want_yes = bool(hits) and rng.random() < 0.5
        candidates = sorted(hits) if want_yes else [j for j in range(1, n) if j not in hits]
        if not candidates:
            candidates = sorted(hits)
        j = candidates[rng.integers(len(candidates))]
        q = (f"Will the {target.name} and the {objs[j].name} collide within {ahead} frames "
             "after the video ends? Answer yes or no.")
        correct, pool = ("yes" if j in hits else "no"), ["yes", "no"]
    else:
        k = int(rng.integers(1, ahead + 1))
        x, y = traj.pos[seen - 1 + k, 0]
        q = f"Which region of the frame will the {target.name} be in {k} frames after the video ends?"
        correct, pool = region_of(float(x), float(y)), REGIONS
    # a yes/no question has two options: always ask it openly
    conv, answer = ask(rng, q, correct, pool, 0.0 if qtype == "collide" else cfg["mcq_prob"],
                       mcq_reply=cfg["mcq_reply"])
    meta = {"qtype": qtype, "target": 0, "observed": seen, "future": ahead,
            "hint": hint(objs, traj, seen), **answer, **scene_meta(objs, traj)}
    frames = render(objs, traj, cfg["size"]) if render_frames else None
    extra = {"future": frames[seen:]} if frames is not None else {}
    return Sample(sample_key("future", split, index), "future", split, index, cfg["fps"], conv, meta,
                  frames[:seen] if frames is not None else None, extra, ground_truth(objs, traj))
