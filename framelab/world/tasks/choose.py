"""choose: text-only drills in finding an option by its text ("Which option is "cyan"?").

Each question quotes a word from the world's vocabulary and lists it among three other words as
options A-D, in describe's multiple-choice format; the reply names the word, then its letter
("Answer: cyan B"). There is nothing to perceive: the whole skill is finding the line that holds
the word and giving that line's letter -- the lookup every "rationale" reply ends with.

Why: a from-scratch LM learns that lookup one answer word at a time when it only meets it in
questions whose answers are a handful of colours, shapes and counts (docs/videollm.md). Drawn
from the whole vocabulary, many different words share one lookup, and what is learned is the
lookup itself, which then serves every task's multiple-choice answers.
"""
from __future__ import annotations

from framelab.world.scene import rng_for
from framelab.world.tasks.common import Sample, ask, sample_key
from framelab.world.vocab import (COLOUR_NAMES, DIRECTIONS, NUMBER_WORDS, REGIONS, SHAPES, SIZE_NAMES,
                                  WALLS)

DEFAULTS = {
    "questions": 4,       # questions (turns) per sample
    "mcq_reply": "rationale",  # multiple-choice reply: "letter" (B) or "rationale" (Answer: cyan B)
}
WORDS = tuple(dict.fromkeys(COLOUR_NAMES + SHAPES + DIRECTIONS + WALLS + REGIONS + SIZE_NAMES
                            + NUMBER_WORDS + tuple(str(k) for k in range(1, 17))))


def make(split: str, index: int, cfg: dict, render_frames: bool = True, world_seed: int = 0) -> Sample:
    cfg = {**DEFAULTS, **cfg}
    k = int(cfg["questions"])
    if k < 1:
        raise ValueError(f"choose: questions={k}; expected >= 1")
    rng = rng_for("choose", split, index, world_seed)
    conv, turns = [], []
    for _ in range(k):
        word = WORDS[rng.integers(len(WORDS))]
        pair, answer = ask(rng, f'Which option is "{word}"?', word, WORDS, 1.0, media=None,
                           mcq_reply=cfg["mcq_reply"])
        conv += pair
        turns.append({"qtype": "word", **answer})
    return Sample(sample_key("choose", split, index), "choose", split, index, 0.0, conv,
                  {**turns[0], "turns": turns})
