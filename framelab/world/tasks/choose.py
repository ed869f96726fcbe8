"""choose: text-only drills in finding an option by its text ("Which option is "cyan"?").

Each question quotes a word from the world's vocabulary and lists it among three other words as
options A-D, in describe's multiple-choice format; the reply names the word, then its letter
("Answer: cyan B"). There is nothing to perceive: the whole skill is finding the line that holds
the word and giving that line's letter -- the lookup every "rationale" reply ends with.

Why: a from-scratch LM learns that lookup one answer word at a time when it only meets it in
questions whose answers are a handful of colours, shapes and counts (docs/videollm.md). The drill
gives the lookup practice of its own: over the whole vocabulary (`words: all`), or over
describe's answer words in describe-like option lists (`words: answers`).

No word is an option in two turns of a sample. When a later turn listed a word again under
another letter, the lookup had two lines to copy from and did not form: the default LM alone on
this drill (`words: answers`, 1200 steps) gave the right letter for 100 % of held-out questions
with one question a sample and 46.9 % with four that could repeat words (docs/videollm.md).
"""
from __future__ import annotations

from framelab.world.scene import rng_for
from framelab.world.tasks.common import LETTERS, Sample, ask, sample_key
from framelab.world.vocab import (COLOUR_NAMES, DIRECTIONS, NUMBER_WORDS, REGIONS, SHAPES, SIZE_NAMES,
                                  WALLS)

DEFAULTS = {
    "questions": 1,       # questions (turns) per sample; no word is an option in two of them
    "mcq_reply": "rationale",  # multiple-choice reply: "letter" (B) or "rationale" (Answer: cyan B)
    "words": "all",       # "all": the world's vocabulary | "answers": describe's answer words,
}                         # the options all of one kind (colours, shapes, directions or counts)
WORDS = {   # lists of option pools: a question draws a pool, then its word and distractors
    "all": [tuple(dict.fromkeys(COLOUR_NAMES + SHAPES + DIRECTIONS + WALLS + REGIONS + SIZE_NAMES
                                + NUMBER_WORDS + tuple(str(k) for k in range(1, 17))))],
    "answers": [COLOUR_NAMES, SHAPES, DIRECTIONS, tuple(str(k) for k in range(1, 7))],
}


def make(split: str, index: int, cfg: dict, render_frames: bool = True, world_seed: int = 0) -> Sample:
    cfg = {**DEFAULTS, **cfg}
    k = int(cfg["questions"])
    if k < 1:
        raise ValueError(f"choose: questions={k}; expected >= 1")
    if cfg["words"] not in WORDS:
        raise ValueError(f"choose: words={cfg['words']!r}; expected one of {list(WORDS)}")
    rng = rng_for("choose", split, index, world_seed)
    conv, turns, used = [], [], set()
    for _ in range(k):
        pools = [[w for w in words if w not in used] for words in WORDS[cfg["words"]]]
        pools = [p for p in pools if len(p) >= len(LETTERS)]
        if not pools:
            raise ValueError(f"choose: questions={k} runs out of words no earlier turn listed "
                             f"(words={cfg['words']!r}); ask fewer questions")
        words = pools[rng.integers(len(pools))]
        word = words[rng.integers(len(words))]
        pair, answer = ask(rng, f'Which option is "{word}"?', word, words, 1.0, media=None,
                           mcq_reply=cfg["mcq_reply"])
        conv += pair
        used.update(answer["choices"])
        turns.append({"qtype": "word", **answer})
    return Sample(sample_key("choose", split, index), "choose", split, index, 0.0, conv,
                  {**turns[0], "turns": turns})
