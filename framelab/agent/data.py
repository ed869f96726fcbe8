"""The agent's data: episodes of the world's `needle` task and expert trajectories synthesised
from its ground truth (the task knows where its needle is).

An expert trajectory (`expert_trajectory`):

1. `search(query)` -- the query names the object for a "when" question ("red circle") and is
   "object seen briefly" for a "what" question (the object is what is asked). Its result lists
   three clip spans as the index cuts them (windows of about 1/16 of the video, half-overlapping):
   the clip that overlaps the needle most, and two clips away from it;
2. `zoom(a, b)` on the first span;
3. with probability `miss_prob` the right clip is listed second, the first zoom misses, and the
   expert zooms on the second span (a search that misses and recovers);
4. `finish(answer)`: the option letter, or for "when" the span it zoomed on (what the context
   shows).

With `notes` (the default), every turn after a zoom opens with a note of what the zoom showed,
before its call: `seen: blue square, red circle` -- the objects visible in at least one of the
zoom's frames, by name in alphabetical order (an order that says nothing of which is the needle).
The note is what the next call follows from: when it names the asked object (or one of the
options, whose only present one is the needle) the expert answers; when it names none, the zoom
missed and the expert zooms on the next span. A trajectory then shows what the agent took each
zoom to contain, and two sampled episodes of one question can differ in what they name (what
group-relative RL compares); docs/agent.md measures both.

`note_form="checks"` writes the note as a verdict on each thing the question asks about instead
of a list: `check: red cross yes` for "when" (the asked object), `check: A red cross no, B blue
ring yes, C ...` for "what" (every option). Each verdict is one yes/no about one named object in
the zoom's frames, and the answer is the option whose verdict is yes: the note does the binding
and the letter lookup in the open, where a list leaves both to the next token.

`note_form="both"` writes the list, then the verdicts: `seen: blue ring, red circle; check: A red
cross no, B blue ring yes, ...`. The list names what the zoom's tokens show, one object at a time
(what the LM's hidden states at an object's tokens already name); each verdict then asks whether
an option's name is in that list, a match of text against text, and the answer is the option whose
verdict is yes. A check note alone asks every verdict of the frames directly.

With probability `direct_prob` the trajectory is instead one forced `finish` after an overview of
`direct_frames` uniformly sampled frames: the same model then also answers without tools, which is
the uniform-sampling baseline of `framelab bench vniah`.

`AgentDataModule` renders each trajectory through `framelab.agent.context` (labels on the
model's own tokens only) and packs a batch into one row (`input_ids`, `labels`, `cu_seqlens`,
`videos` in placeholder order) with the raw `episodes` (frames, fps, question, meta) that the RL
stage and validation run the agent on. Samples are generated on the fly from (split, index):
deterministic, nothing downloaded. Training takes them in `EpisodeOrder` (framelab.agent.order)
and keeps its place in it as the datamodule's state, so a resumed run goes on with the next
episodes.
"""
from __future__ import annotations

import math
import warnings

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from framelab.agent.context import Renderer
from framelab.agent.loop import FORCED, Trajectory, Turn
from framelab.agent.order import EpisodeOrder
from framelab.agent.tools import fmt_spans, zoom_indices
from framelab.datamodules.special_tokens import PAD, special_token_ids
from framelab.datamodules.tokenizer import ensure_tokenizer
from framelab.errors import UserError
from framelab.evaluation.temporal import temporal_iou
from framelab.world.tasks import make_sample
from framelab.world.tasks.common import LETTERS

WHAT_QUERY = "object seen briefly"
SEEN = "seen: "
CHECK = "check: "
NOTE_SEP = "; "                   # between the list and the verdicts of a `both` note
NOTE_FORMS = ("names", "checks", "both")
# Frame side (pixels) the agent renders the needle videos at: the default run's tower learns at
# 64 px, where a linear probe reads shape from its tokens at 98 %; at 32 px, at 52-57 %
# (`framelab bench probe --size`, docs/agent.md).
FRAME_SIZE = 64


def episode(split: str, index: int, params: dict, world_seed: int = 0) -> dict:
    """One needle sample as an episode: frames uint8 (T, H, W, 3), fps, question, meta, key and
    the world's per-frame ground truth `gt` (boxes, velocities, visibility)."""
    s = make_sample("needle", split, index, params, world_seed=world_seed)
    question = s.conversation[0]["content"].replace("<video>\n", "").replace("<video>", "")
    return {"frames": s.frames, "fps": float(s.fps), "question": question, "meta": dict(s.meta),
            "key": s.key, "gt": s.gt}


def as_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def clip_spans(frames: int, fps: float, temporal_patch: int = 2) -> list[tuple[float, float]]:
    """The spans (seconds) of the clips `framelab.agent.tools.VideoIndex` cuts a video into."""
    steps = frames // temporal_patch
    window = max(1, round(steps / 16))
    stride = max(1, window // 2)
    starts = list(range(0, max(steps - window, 0) + 1, stride))
    if starts[-1] + window < steps:
        starts.append(steps - window)
    step_s = temporal_patch / fps
    return [(s * step_s, (s + window) * step_s) for s in starts]


def seen_note(objects: list[dict], indices: list[int]) -> str:
    """`seen: a, b`: the objects visible in any of the frames `indices`, alphabetically."""
    names = sorted({f"{o['colour']} {o['shape']}" for o in objects
                    if any(o["t_in"] <= t and (o["t_out"] is None or t < o["t_out"])
                           for t in indices)})
    return SEEN + (", ".join(names) if names else "nothing")


def visible(objects: list[dict], name: str, indices: list[int]) -> bool:
    """Is an object called `name` ("colour shape") visible in any of the frames `indices`?"""
    return any(f"{o['colour']} {o['shape']}" == name and
               any(o["t_in"] <= t and (o["t_out"] is None or t < o["t_out"]) for t in indices)
               for o in objects)


def check_note(items: list[tuple[str, str]], objects: list[dict], indices: list[int]) -> str:
    """`check: A red cross no, B blue ring yes`: a verdict on each (label, name) in `items`
    (labels may be empty), yes when the object is visible in any of the frames `indices`."""
    return CHECK + ", ".join(
        f"{label + ' ' if label else ''}{name} {'yes' if visible(objects, name, indices) else 'no'}"
        for label, name in items)


def expert_note(note_form: str, asked: list[tuple[str, str]], objects: list[dict],
                indices: list[int]) -> str:
    """The expert's note of what the frames `indices` show, in the form `note_form` (the module
    docstring): a list, a verdict per asked item, or both."""
    if note_form == "names":
        return seen_note(objects, indices)
    if note_form == "checks":
        return check_note(asked, objects, indices)
    return seen_note(objects, indices) + NOTE_SEP + check_note(asked, objects, indices)


def note_check_spans(note: str) -> list[tuple[str, bool, int, int]]:
    """(name, verdict, start, end) of each item of a note's verdicts `check: A red cross no, B
    blue ring yes` (a check note, or the part of a `both` note after its list), with the item's
    characters note[start:end] (its letter, name and verdict); option letters are dropped from
    the name, [] for a note without verdicts, and an item without a yes/no verdict counts as no."""
    if note.startswith(CHECK):
        at = 0
    else:
        at = note.find(NOTE_SEP + CHECK)
        if at < 0:
            return []
        at += len(NOTE_SEP)
    out, pos = [], at + len(CHECK)
    for item in note[at + len(CHECK):].split(","):
        start = pos + len(item) - len(item.lstrip())
        end = pos + len(item.rstrip())
        pos += len(item) + 1
        words = item.split()
        if len(words) >= 2 and len(words[0]) == 1 and words[0].isupper():
            words = words[1:]
        verdict = bool(words) and words[-1] == "yes"
        name = " ".join(words[:-1] if words and words[-1] in ("yes", "no") else words)
        if name:
            out.append((name, verdict, start, end))
    return out


def note_checks(note: str) -> list[tuple[str, bool]]:
    """The (name, verdict) pairs of a check note (`note_check_spans` without the spans)."""
    return [(name, verdict) for name, verdict, _, _ in note_check_spans(note)]


def asked_items(meta: dict) -> list[tuple[str, str]]:
    """What a check note gives a verdict on: the asked object for "when" (no label), every
    option with its letter for "what"."""
    if meta.get("format") == "span":
        obj = meta["objects"][meta.get("target", 0)]
        return [("", f"{obj['colour']} {obj['shape']}")]
    return list(zip(LETTERS, meta["choices"]))


def expert_trajectory(ep: dict, rng: np.random.Generator, miss_prob: float = 0.3,
                      direct_prob: float = 0.0, overview: int = 8,
                      direct_frames: int = 16, notes: bool = True,
                      zoom_frames: int = 8, note_form: str = "names") -> Trajectory:
    """An expert trajectory for an episode (the module docstring)."""
    if note_form not in NOTE_FORMS:
        raise UserError(f"data.note_form={note_form!r}: expected one of {', '.join(NOTE_FORMS)}")
    meta, fps, n = ep["meta"], ep["fps"], int(ep["frames"].shape[0])
    when = meta.get("format") == "span"
    if rng.random() < direct_prob:
        answer = meta["answer"]
        call = f"{FORCED}{answer})"
        return Trajectory(ep["question"], direct_frames,
                          [Turn(f"<tool_call>{call}</tool_call>", call, forced=True)], answer,
                          {"key": ep["key"], "direct": True})
    spans = clip_spans(n, fps)
    truth = meta["spans"]
    ious = [temporal_iou(s, truth) for s in spans]
    hit = int(np.argmax(ious))
    far = [i for i, s in enumerate(spans) if temporal_iou(s, [spans[hit]]) == 0.0 and ious[i] == 0]
    others = [far[i] for i in rng.permutation(len(far))[:2]] if far else []
    miss = bool(others) and rng.random() < miss_prob
    listed = [others[0], hit] + others[1:] if miss else [hit] + others
    asked = asked_items(meta)
    name = asked[0][1] if when else None
    query = name or WHAT_QUERY
    turns = [Turn("", f"search({query})", fmt_spans(spans[i] for i in listed))]
    duration = n / fps
    for i in (listed[:2] if miss else listed[:1]):
        lo, hi = max(0.0, spans[i][0]), min(duration, spans[i][1])
        turns.append(Turn("", f"zoom({spans[i][0]:.1f}, {spans[i][1]:.1f})",
                          f"{lo:.1f}-{hi:.1f}", [lo, hi], zoom_frames))
    answer = f"{spans[hit][0]:.1f}-{spans[hit][1]:.1f}" if when else meta["answer"]
    turns.append(Turn("", f"finish({answer})"))
    for before, t in zip([None] + turns, turns):
        note = ""
        if notes and before is not None and before.span is not None:
            shown = zoom_indices(n, fps, *before.span, before.frames).tolist()
            note = expert_note(note_form, asked, meta["objects"], shown)
        t.text = f"{note}<tool_call>{t.call}</tool_call>"
    return Trajectory(ep["question"], overview, turns, answer, {"key": ep["key"], "miss": miss})


class _Episodes(Dataset):
    def __init__(self, dm: "AgentDataModule", split: str, size: int):
        self.dm, self.split, self.size = dm, split, size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        if isinstance(i, tuple):                    # training: (epoch, places taken, index)
            epoch, taken, index = i
            return {**self.dm.item(self.split, index), "place": (epoch, taken)}
        return self.dm.item(self.split, i)


class AgentDataModule(L.LightningDataModule):
    def __init__(self, lengths=(64, 128, 256, 512), depths=(0.0, 0.25, 0.5, 0.75, 1.0),
                 samples: dict | None = None, size: int = FRAME_SIZE, patch_size: int = 8,
                 when_prob: float = 0.5, overview: int = 8, direct_frames: int = 16,
                 miss_prob: float = 0.3, direct_prob: float = 0.2, notes: bool = True,
                 note_form: str = "names", batch_size: int = 8,
                 val_batch_size: int = 4, cache_dir: str = ".cache",
                 tokenizer_vocab_size: int = 1024,
                 world_seed: int = 0, seed: int = 0, num_workers: int = 0):
        super().__init__()
        self.lengths, self.depths = [int(x) for x in lengths], [float(d) for d in depths]
        if not self.lengths or any(n < 32 or n > 4096 for n in self.lengths):
            raise UserError(f"data.lengths={list(lengths)}: expected haystack lengths of 32..4096 "
                            "frames (the benchmark uses 64..2048)")
        self.samples = {"train": 4096, "val": 32, **dict(samples or {})}
        self.size, self.patch_size = int(size), int(patch_size)
        if self.size % (2 * self.patch_size):
            raise UserError(f"data.size={size} must be a multiple of 2 x data.patch_size="
                            f"{2 * self.patch_size}")
        self.when_prob, self.overview, self.direct_frames = when_prob, overview, direct_frames
        self.miss_prob, self.direct_prob, self.notes = miss_prob, direct_prob, bool(notes)
        if note_form not in NOTE_FORMS:
            raise UserError(f"data.note_form={note_form!r}: expected one of "
                            f"{', '.join(NOTE_FORMS)}")
        self.note_form = note_form
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.cache_dir, self.vocab = cache_dir, tokenizer_vocab_size
        self.world_seed, self.seed, self.num_workers = world_seed, seed, num_workers
        self.tokenizer = None
        self.special_ids: dict[str, int] = {}
        self.renderer: Renderer | None = None
        self.position: tuple[int, int] | None = None     # training (epoch, episodes taken)

    # ---- what the modules read ----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = ensure_tokenizer(self.cache_dir, None, self.vocab)
            self.special_ids = special_token_ids(self.tokenizer)
            self.renderer = Renderer(self.tokenizer, self.vision_tokens)

    @property
    def vocab_size(self) -> int:
        self.setup()
        return self.tokenizer.get_vocab_size()

    def vision_tokens(self, frames: torch.Tensor) -> int:
        """Placeholders of a clip: one per 2 frames x 2p x 2p pixels (the data's convention)."""
        cell = 2 * self.patch_size
        grid = (frames.shape[2] // cell) * (frames.shape[3] // cell)
        return math.ceil(frames.shape[0] / 2) * grid

    def params(self) -> dict:
        return {"lengths": self.lengths, "depths": self.depths, "size": self.size,
                "when_prob": self.when_prob}

    # ---- items --------------------------------------------------------------------------------
    def item(self, split: str, index: int) -> dict:
        self.setup()
        ep = episode(split, index, self.params(), self.world_seed)
        code = {"train": 0, "val": 1, "test": 2}.get(split, 3)
        rng = np.random.default_rng([self.seed, index, code])
        traj = expert_trajectory(ep, rng, self.miss_prob, self.direct_prob, self.overview,
                                 self.direct_frames, self.notes, note_form=self.note_form)
        frames = as_tensor(ep["frames"])
        out = traj.context(self.renderer, frames, ep["fps"]).render(generation_prompt=False,
                                                                  finished=True)
        return {"input_ids": out.ids, "labels": out.labels, "videos": out.videos, "episode": ep}

    def collate(self, items: list[dict]) -> dict:
        ids = [t for it in items for t in it["input_ids"]]
        labels = [t for it in items for t in it["labels"]]
        cu = torch.zeros(len(items) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(np.cumsum([len(it["input_ids"]) for it in items]), dtype=torch.int32)
        batch = {"input_ids": torch.tensor(ids)[None], "labels": torch.tensor(labels)[None],
                 "cu_seqlens": cu, "videos": [v for it in items for v in it["videos"]],
                 "episodes": [it["episode"] for it in items]}
        if "place" in items[0]:
            batch["_position"] = max(it["place"] for it in items)
        return batch

    def _loader(self, split: str, batch_size: int, sampler=None) -> DataLoader:
        return DataLoader(_Episodes(self, split, int(self.samples.get(split, 0))),
                          batch_size=batch_size, sampler=sampler, collate_fn=self.collate,
                          num_workers=self.num_workers)

    def train_dataloader(self):
        """Episodes in `EpisodeOrder` (framelab.agent.order), from the position a resumed run
        left off at."""
        # Lightning warns on a mid-epoch resume unless the loader itself is stateful; this one's
        # place is the datamodule's state, restored before the loader is built
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended "
                                "before the epoch ended")
        rank, world = self._ranks()
        order = EpisodeOrder(int(self.samples.get("train", 0)), self.seed, rank, world)
        if self.position is not None:
            order.resume(*self.position)
        return self._loader("train", self.batch_size, order)

    def val_dataloader(self):
        return self._loader("val", self.val_batch_size)

    def test_dataloader(self):
        return self._loader("test", self.val_batch_size)

    # ---- the training position (kept in checkpoints by Lightning) ------------------------------
    def _ranks(self) -> tuple[int, int]:
        """(this rank, ranks) of the trainer the datamodule is attached to; (0, 1) without one."""
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict) and "_position" in batch:
            self.position = tuple(int(x) for x in batch.pop("_position"))
        return batch

    def state_dict(self) -> dict:
        if self.position is None:
            return {}
        return {"epoch": self.position[0], "taken": self.position[1], "seed": self.seed,
                "train": int(self.samples.get("train", 0)), "world": self._ranks()[1],
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if isinstance(state, dict) and not state:
            return
        keys = ("epoch", "taken", "seed", "train", "world", "batch_size")
        try:
            if not isinstance(state, dict):
                raise TypeError
            epoch, taken, seed, train, world, batch = (int(state[k]) for k in keys)
            if epoch < 0 or not 0 <= taken <= train or world < 1 or batch < 1:
                raise ValueError
        except (KeyError, TypeError, ValueError, OverflowError):
            raise UserError(f"the checkpoint's agent data position {state!r} is not one "
                            f"AgentDataModule writes ({', '.join(keys)}: integers, 0 <= taken <= "
                            "train); resume from a checkpoint of an agent run, or start a new "
                            "run") from None
        for key, saved, now in (("seed", seed, self.seed),
                                ("samples.train", train, self.samples.get("train", 0))):
            if saved != now:
                raise UserError(f"the checkpoint's agent data was drawn with data.{key}={saved}, "
                                f"not {now}; resume with the same data for the same episodes")
        ranks = self._ranks()[1]
        if (world, batch) != (ranks, self.batch_size):
            raise UserError(f"the checkpoint's agent run took batches of {batch} on {world} "
                            f"rank(s), this one {self.batch_size} on {ranks}; resume with the "
                            "same data.batch_size and devices (Lightning counts the epoch's "
                            "batches as they were taken)")
        self.position = (epoch, taken)

    @property
    def pad_id(self) -> int:
        self.setup()
        return self.special_ids[PAD]
