"""describe: short clips and questions about colour, shape, count and motion direction.

Objects in a clip have pairwise distinct shapes and colours, so "the circle" or "the red object"
each name exactly one object. The object asked about is object 0 (drawn from the split's query
pairs; held-out pairs in the ood split).

With `questions` > 1 the conversation asks several questions about the same object of the same
clip, one per turn, each of a different type (the video is shown once, in the first turn), all
multiple choice or all open. No turn's text may give away a later turn's answer: "What colour is
the circle?" names the shape and "What shape is the red object?" the colour, so a clip asks about
one of colour and shape, never both, and names the object by the other one throughout -- hence at
most 3 questions (colour or shape, count, direction; direction is dropped when the object does not
move clearly). `meta` then lists every turn under "turns" (qtype, format, answer, choices) and its
top-level answer keys are the first turn's. Several supervised answers per clip are what lets a
small model learn the questions from scratch in minutes: the vision tokens are paid for once.
"""
from __future__ import annotations

from framelab.world.render import render
from framelab.world.tasks.common import (Sample, ask, direction, ground_truth, random_scene, sample_key,
                                         scene_meta)
from framelab.world.vocab import COLOUR_NAMES, DIRECTIONS, SHAPES

DEFAULTS = {
    "frames": 8,          # clip length
    "size": 32,           # rendered frame side (pixels)
    "fps": 4.0,           # nominal frame rate written to the metadata
    "min_objects": 1,
    "max_objects": 6,
    "mcq_prob": 0.5,      # probability of a multiple-choice question (else open answer)
    "questions": 1,       # questions (turns) per clip, each of a different type, 1..3
    "mcq_reply": "letter",  # multiple-choice reply: "letter" (B) or "rationale" (Answer: red B)
}
QTYPES = ("colour", "shape", "count", "direction")
MAX_QUESTIONS = 3


def make(split: str, index: int, cfg: dict, render_frames: bool = True, world_seed: int = 0) -> Sample:
    cfg = {**DEFAULTS, **cfg}
    rng, objs, traj = random_scene("describe", split, index, cfg, world_seed)
    n = len(objs)
    target = objs[0]
    move = direction(traj, 0, 0)
    k = int(cfg["questions"])
    if not 1 <= k <= MAX_QUESTIONS:
        raise ValueError(f"describe: questions={k}; expected 1..{MAX_QUESTIONS}")
    if k == 1:    # one question: any of the four types
        qtypes, ref = [QTYPES[rng.integers(len(QTYPES))]], None
        if move is None and qtypes == ["direction"]:  # no motion at the start: ask the colour
            qtypes = ["colour"]
    else:         # one of colour/shape; the object is named by the other (see the docstring)
        attribute = ("colour", "shape")[rng.integers(2)]
        ref = f"the {target.shape}" if attribute == "colour" else f"the {target.colour} object"
        kinds = [attribute, "count"] + (["direction"] if move is not None else [])
        qtypes = [kinds[i] for i in rng.permutation(len(kinds))[:k]]
    # a multi-question clip is all multiple choice or all open (drawn once): mixing them lets an
    # open answer be copied from an earlier turn's option list instead of read off the video
    mcq_prob = cfg["mcq_prob"] if k == 1 else float(rng.random() < cfg["mcq_prob"])
    conv, turns = [], []
    for qtype in qtypes:
        q, correct, pool = question(qtype, target, n, move, ref, max(cfg["max_objects"], 4))
        pair, answer = ask(rng, q, correct, pool, mcq_prob, media="<video>" if not conv else None,
                           mcq_reply=cfg["mcq_reply"])
        conv += pair
        turns.append({"qtype": qtype, **answer})
    meta = {**turns[0], "target": 0, **scene_meta(objs, traj)}
    if k > 1:
        meta["turns"] = turns
    return Sample(sample_key("describe", split, index), "describe", split, index, cfg["fps"], conv,
                  meta, render(objs, traj, cfg["size"]) if render_frames else None,
                  gt=ground_truth(objs, traj))


def question(qtype: str, target, n: int, move: str | None, ref: str | None = None,
             max_count: int = 8) -> tuple[str, str, list]:
    """(question, correct answer, answer pool) of one question type about object `target`, named
    `ref` (None: by its shape for colour, its colour for shape, both for direction). Counts are
    drawn from 1..max_count: distractors outside the counts a scene can have would let a model
    that never counts rule them out."""
    if qtype == "colour":
        return f"What colour is {ref or 'the ' + target.shape}?", target.colour, COLOUR_NAMES
    if qtype == "shape":
        return (f"What shape is {ref or f'the {target.colour} object'}?", target.shape, SHAPES)
    if qtype == "count":
        return "How many objects are in the video?", str(n), [str(k) for k in range(1, max_count + 1)]
    return (f"At the start of the video, is {ref or 'the ' + target.name} moving left, right, up "
            "or down?", move, DIRECTIONS)
