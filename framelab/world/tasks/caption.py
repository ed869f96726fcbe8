"""caption: a describe-style clip and the one sentence that describes it (continued-pretraining data).

The user asks for a description; the reply names every object, left to right at the first frame,
with the direction it starts moving in when that is clear: "The video shows a red circle moving
left and a blue square." -- the very sentence `read` asks its questions about. InternVideo3's
continued pretraining is on video-text pairs like this; here a caption supervises the colour, shape
and motion of every object in the clip in one reply, where a describe question supervises one
fact. It is in `videollm_cpt`'s mixture. Added to the default SFT mixture it did not help within
2000 steps (describe accuracy fell: the other tasks got fewer steps; docs/videollm.md).
"""
from __future__ import annotations

from framelab.world.render import render
from framelab.world.tasks.common import (Sample, direction, ground_truth, random_scene, sample_key,
                                         scene_meta, scene_sentence)

DEFAULTS = {
    "frames": 8,          # clip length
    "size": 32,           # rendered frame side (pixels)
    "fps": 4.0,           # nominal frame rate written to the metadata
    "min_objects": 1,
    "max_objects": 3,
}
PROMPT = "Describe the objects in the video from left to right."


def make(split: str, index: int, cfg: dict, render_frames: bool = True, world_seed: int = 0) -> Sample:
    cfg = {**DEFAULTS, **cfg}
    _, objs, traj = random_scene("caption", split, index, cfg, world_seed)
    order = sorted(range(len(objs)), key=lambda i: float(traj.pos[0, i, 0]))
    text = scene_sentence([objs[i].name for i in order], [direction(traj, i, 0) for i in order])
    conv = [{"role": "user", "content": f"<video>\n{PROMPT}"},
            {"role": "assistant", "content": text}]
    meta = {"format": "caption", "answer": text, **scene_meta(objs, traj)}
    return Sample(sample_key("caption", split, index), "caption", split, index, cfg["fps"], conv,
                  meta, render(objs, traj, cfg["size"]) if render_frames else None,
                  gt=ground_truth(objs, traj))
