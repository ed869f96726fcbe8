"""read: text-only questions about a scene described in words (no video).

The user's first turn carries a one-sentence description of a describe-style scene ("The video
shows a red circle moving left, a blue square moving up and a green ring.") where the other tasks
carry a `<video>`; the questions are describe's (colour, shape, count, direction), asked in
describe's format, one per turn, each about one object of the scene. The answer is in the text.

Why a text task in a video world: a video LLM starts from a language model that already reads
multiple-choice questions (InternVideo3 from Qwen3-8B), and SFT mixtures commonly keep some
text-only instruction data (LLaVA-1.5's has ShareGPT conversations). framelab's tiny default LM
starts from scratch, and finding the letter of the option it means is pure text
(docs/videollm.md measures how slowly it comes from video questions alone). Reading questions
are that skill's practice at a few dozen tokens each, with no vision tokens to pay for.
"""
from __future__ import annotations

from framelab.world.scene import domain, make_objects, pick_pairs, rng_for
from framelab.world.tasks.common import Sample, ask, sample_key, scene_sentence
from framelab.world.tasks.describe import QTYPES, question
from framelab.world.vocab import DIRECTIONS

DEFAULTS = {
    "min_objects": 1,
    "max_objects": 3,
    "questions": 4,       # questions (turns) per description, 1..4, each of a different type
                          # (fewer when no object moves: no direction question then)
    "mcq_prob": 1.0,      # probability that a description's questions are multiple choice
    "mcq_reply": "letter",  # multiple-choice reply: "letter" (B) or "rationale" (Answer: red B)
    "still_prob": 0.25,   # probability that an object is described without a motion
}


def make(split: str, index: int, cfg: dict, render_frames: bool = True, world_seed: int = 0) -> Sample:
    cfg = {**DEFAULTS, **cfg}
    k = int(cfg["questions"])
    if not 1 <= k <= len(QTYPES):
        raise ValueError(f"read: questions={k}; expected 1..{len(QTYPES)}")
    rng = rng_for("read", split, index, world_seed)
    n = int(rng.integers(cfg["min_objects"], cfg["max_objects"] + 1))
    dom = domain(split)
    objs = make_objects(rng, pick_pairs(rng, n, dom, distinct=True), dom)
    moves = [None if rng.random() < cfg["still_prob"] else DIRECTIONS[rng.integers(len(DIRECTIONS))]
             for _ in objs]
    order = rng.permutation(n)
    text = scene_sentence([objs[i].name for i in order], [moves[i] for i in order])
    moving = [i for i in range(n) if moves[i]]
    kinds = [q for q in QTYPES if q != "direction" or moving]
    mcq_prob = float(rng.random() < cfg["mcq_prob"])
    conv, turns = [], []
    for qtype in [kinds[j] for j in rng.permutation(len(kinds))[:k]]:
        pool = moving if qtype == "direction" else list(range(n))
        i = int(pool[rng.integers(len(pool))])
        q, correct, options = question(qtype, objs[i], n, moves[i], max_count=max(cfg["max_objects"], 4))
        pair, answer = ask(rng, q, correct, options, mcq_prob, media=text if not conv else None,
                           mcq_reply=cfg["mcq_reply"])
        conv += pair
        turns.append({"qtype": qtype, "target": i, **answer})
    objects = [{**o.describe(), "direction": m} for o, m in zip(objs, moves)]
    meta = {**turns[0], "objects": objects, "turns": turns}
    return Sample(sample_key("read", split, index), "read", split, index, 0.0, conv, meta)

