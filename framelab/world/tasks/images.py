"""images: class-conditional still images for image generation (class = shape x colour).

One object of a random scale at a random position on the background. In-domain splits draw the
seen pairs; the ood split draws only held-out pairs (compositional generalisation). Labels are
global class ids over all shape-colour pairs (vocab.class_id), so they mean the same in every split.
"""
from __future__ import annotations

import numpy as np

from framelab.world.render import draw
from framelab.world.scene import Obj, domain, rng_for
from framelab.world.tasks.common import Sample, sample_key
from framelab.world.vocab import BACKGROUND, class_id

DEFAULTS = {
    "size": 32,
    "min_scale": 1.2,     # object radius = scale x the medium radius
    "max_scale": 2.6,
}


def make(split: str, index: int, cfg: dict, render_frames: bool = True, world_seed: int = 0) -> Sample:
    cfg = {**DEFAULTS, **cfg}
    rng = rng_for("images", split, index, world_seed)
    shape, colour = domain(split).query_pairs[rng.integers(len(domain(split).query_pairs))]
    scale = float(rng.uniform(cfg["min_scale"], cfg["max_scale"]))
    obj = Obj(shape, colour, "medium", (0.5, 0.5), (0.0, 0.0))
    r = obj.radius * scale
    x, y = (float(v) for v in rng.uniform(r, 1 - r, size=2))
    frames = None
    if render_frames:
        frames = np.empty((1, cfg["size"], cfg["size"], 3), np.uint8)
        frames[:] = np.asarray(BACKGROUND, np.uint8)
        draw(frames[0], obj, x, y, scale)
    label = class_id(shape, colour)
    phrase = f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"
    conv = [{"role": "user", "content": "<image>\nWhat is in this image?\nAnswer with a short phrase."},
            {"role": "assistant", "content": phrase}]
    box = [round(v, 4) for v in (x - r, y - r, x + r, y + r)]
    meta = {"label": label, "shape": shape, "colour": colour, "scale": round(scale, 4),
            "box": box, "format": "open", "answer": phrase, "choices": []}
    return Sample(sample_key("images", split, index), "images", split, index, 1.0, conv, meta, frames,
                  gt={"box": np.asarray(box, np.float32), "label": np.asarray(label)})
