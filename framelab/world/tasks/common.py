"""What every task produces (`Sample`) and the helpers tasks share to phrase questions.

A sample is media (frames) + a chat conversation + JSON metadata + ground-truth arrays. The user's
turn carries a `<video>` (or `<image>`) placeholder where the visual input goes; datamodules expand
it into vision tokens (a text-only task, `read`, has no frames and no placeholder). Multiple-choice questions list options A-D and expect the letter (reply
"letter": "B") or the option's text and then its letter (reply "rationale": "Answer: red B" -- a
one-word reason before the choice: naming what it saw and finding that name among the options are
then two skills a small model can learn one at a time). The letter follows the option's text
directly: with tokens in between ("red (B)") a small model learns to find the letter of the
option it named far more slowly (docs/videollm.md).
Open questions expect a single word, number or span.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from framelab.world.physics import Trajectory, simulate
from framelab.world.render import boxes
from framelab.world.scene import Obj, domain, make_objects, pick_pairs, rng_for

LETTERS = "ABCD"
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
RATIONALE_SUFFIX = "Answer with the option's text, then its letter."
MCQ_REPLIES = ("letter", "rationale")
OPEN_SUFFIX = "Answer with a single word or phrase."


@dataclass
class Sample:
    """One generated example. frames: uint8 (T, H, W, 3) or None when not rendered; extra_frames:
    other clips that belong to it (e.g. "future"); gt: ground-truth arrays (pos, vel, visible,
    boxes, ...); meta: JSON-able task facts (answer, choices, spans, objects, events, ...)."""
    key: str
    task: str
    split: str
    index: int
    fps: float
    conversation: list
    meta: dict
    frames: np.ndarray | None = None
    extra_frames: dict = field(default_factory=dict)
    gt: dict = field(default_factory=dict)

    def annotation(self) -> dict:
        """The JSON document stored with the sample in a shard."""
        n = 0 if self.frames is None else int(self.frames.shape[0])
        return {"key": self.key, "task": self.task, "split": self.split, "index": self.index,
                "fps": self.fps, "num_frames": n, "conversations": self.conversation,
                "meta": self.meta}


def sample_key(task: str, split: str, index: int) -> str:
    """Shard key: letters, digits and underscores only (WebDataset splits names at the first dot)."""
    return f"{task}_{split}_{index:09d}"


def ask(rng: np.random.Generator, question: str, correct: str, pool, mcq_prob: float,
        media: str | None = "<video>", mcq_reply: str = "letter") -> tuple[list, dict]:
    """A two-turn conversation asking `question`, multiple choice with probability `mcq_prob`
    (three distractors from `pool`) or open. Returns (conversation, answer metadata). `media` is
    what the user turn starts with: a placeholder, or text standing in for one (read's
    description); None: nothing, e.g. a follow-up question; `mcq_reply`
    is the multiple-choice reply format, "letter" or "rationale" (see the module docstring)."""
    if mcq_reply not in MCQ_REPLIES:
        raise ValueError(f"mcq_reply={mcq_reply!r}; expected one of {', '.join(MCQ_REPLIES)}")
    if rng.random() < mcq_prob:
        others = [p for p in pool if p != correct]
        picked = [others[i] for i in rng.permutation(len(others))[:len(LETTERS) - 1]]
        choices = picked + [correct]
        choices = [choices[i] for i in rng.permutation(len(choices))]
        letter = LETTERS[choices.index(correct)]
        suffix = MCQ_SUFFIX if mcq_reply == "letter" else RATIONALE_SUFFIX
        # the instruction before the options (as Video-MME's prompt has it): the reply then follows
        # the option list directly; with the instruction between them, a text-only probe of this
        # format did not learn to find a named option's letter in 36k questions (docs/videollm.md)
        lines = [question, suffix] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
        meta = {"format": "mcq", "answer": letter, "answer_text": correct, "choices": choices,
                "reply": mcq_reply}
        prompt = "\n".join(lines)
        # "Answer: red" so the named option is the very token of its option line (" red"): a
        # reply opening with "red" would need the model to learn that "red" and " red" match
        reply = letter if mcq_reply == "letter" else f"Answer: {correct} {letter}"
    else:
        meta = {"format": "open", "answer": correct, "answer_text": correct, "choices": []}
        prompt, reply = f"{question}\n{OPEN_SUFFIX}", correct
    conv = [{"role": "user", "content": f"{media}\n{prompt}" if media else prompt},
            {"role": "assistant", "content": reply}]
    return conv, meta


def random_scene(task: str, split: str, index: int, cfg: dict, world_seed: int = 0):
    """The sample's generator, and a clip of `min_objects`..`max_objects` objects of pairwise
    distinct shapes and colours (the split's pairs) simulated for `frames` frames."""
    rng = rng_for(task, split, index, world_seed)
    dom = domain(split)
    n = int(rng.integers(cfg["min_objects"], cfg["max_objects"] + 1))
    objs = make_objects(rng, pick_pairs(rng, n, dom, distinct=True), dom)
    return rng, objs, simulate(objs, cfg["frames"])


def scene_sentence(names: list[str], moves: list[str | None]) -> str:
    """"The video shows a red circle moving left, a blue square and a green ring." """
    parts = [f"{'an' if n[0] in 'aeiou' else 'a'} {n}" + (f" moving {m}" if m else "")
             for n, m in zip(names, moves)]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"The video shows {listed}."


def scene_meta(objs: list[Obj], traj: Trajectory) -> dict:
    """Object list and event list for the sample's JSON."""
    return {"objects": [o.describe() for o in objs], "events": traj.events}


def ground_truth(objs: list[Obj], traj: Trajectory) -> dict:
    """Per-frame arrays: pos/vel (T, n, 2), visible (T, n), boxes (T, n, 4) in [0, 1]."""
    return {"pos": traj.pos, "vel": traj.vel, "visible": traj.visible, "boxes": boxes(objs, traj)}


def direction(traj: Trajectory, i: int, start: int, span: int = 4) -> str | None:
    """Dominant direction of object i over frames [start, start + span] when unambiguous (no wall
    hit or collision in between and one axis clearly dominates), else None."""
    end = min(start + span, traj.frames - 1)
    if end <= start:
        return None
    if any(start < e["t"] <= end and i in e["objects"] for e in traj.events):
        return None
    dx, dy = traj.pos[end, i] - traj.pos[start, i]
    if max(abs(dx), abs(dy)) < 1.5 * min(abs(dx), abs(dy)) + 1e-6:
        return None
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"
