"""Text tokenizers (Hugging Face `tokenizers`): the world tokenizer framelab trains, or any local
tokenizer.json, both with framelab's special tokens registered.

The world tokenizer is a byte-level BPE trained on the text (questions, options, answers, hints)
of a pinned list of tasks and splits, `CORPUS`, so it encodes any string and is small (default
1024 ids). The list is explicit, not "every task": a new task in `framelab.world.tasks` leaves the
tokenizer, and so every run, as it was. Changing `CORPUS` means a new `TOKENIZER_VERSION`. It is
trained once per (world recipe, tokenizer version, vocabulary size) and cached as
`<cache_dir>/tokenizer-<recipe>-<tokenizer version>-<V>/tokenizer.json`.
"""
from __future__ import annotations

import os
import uuid
from itertools import product
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from framelab.datamodules.special_tokens import MEDIA_PLACEHOLDERS, SPECIAL_TOKENS
from framelab.errors import UserError
from framelab.world import RECIPE_VERSION
from framelab.world.tasks import make_sample

TOKENIZER_VERSION = "tok-1"

# (task, params, multiple-choice reply formats) whose text is the corpus, in this order, each over
# CORPUS_SPLITS with CORPUS_SAMPLES samples ((None,): the task has no reply formats). Tasks whose
# text is made of the others' words and sentences (caption is read's sentence, choose lists the
# world's words as options) are left out, so adding them changed no token. The tokenizer decides
# which runs the lookup forms in (docs/videollm.md), so a new merge perturbs every run: change
# any of these only with a new TOKENIZER_VERSION.
CORPUS = (
    ("describe", {}, ("letter", "rationale")),
    ("needle", {"lengths": [64]}, ("letter", "rationale")),
    ("future", {}, ("letter", "rationale")),
    ("cue", {}, ("letter", "rationale")),
    ("images", {}, (None,)),
    ("read", {}, ("letter", "rationale")),
)
CORPUS_SPLITS = ("train", "val", "test", "ood")
CORPUS_SAMPLES = 64


def world_corpus(samples_per_task: int = CORPUS_SAMPLES) -> list[str]:
    """Text of `samples_per_task` samples of each `CORPUS` task, split and reply format (generated
    without rendering)."""
    texts = []
    for task, params, replies in CORPUS:
        for split, reply, i in product(CORPUS_SPLITS, replies, range(samples_per_task)):
            s = make_sample(task, split, i, {**params, "mcq_reply": reply} if reply else params,
                            render=False)
            for turn in s.conversation:
                text = turn["content"]
                for ph in MEDIA_PLACEHOLDERS:
                    text = text.replace(ph, "")
                texts.append(text.strip())
            if "hint" in s.meta:
                texts.append(s.meta["hint"])
    return texts


def train_world_tokenizer(vocab_size: int = 1024,
                          samples_per_task: int = CORPUS_SAMPLES) -> Tokenizer:
    """A byte-level BPE tokenizer trained on the world's text; special tokens take ids 0..k-1."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(world_corpus(samples_per_task), trainer=trainer)
    return tok


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A local tokenizer.json (e.g. Qwen3's) with framelab's special tokens added where missing.
    `path` is the file, the folder holding it, or `hf:DIR` (a checkpoint directory, as `init_from`
    spells it)."""
    path = str(path)
    p = Path(path[len("hf:"):] if path.startswith("hf:") else path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise UserError(f"tokenizer file {p} not found; give the path of a tokenizer.json "
                        "(or of the folder holding one), or leave tokenizer_path empty for the world tokenizer")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # noqa: BLE001 - the library raises bare Exceptions on bad files
        raise UserError(f"cannot read tokenizer {p}: {str(e).splitlines()[0]}; expected a "
                        "Hugging Face tokenizers JSON file") from None
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens(missing)
    return tok


def ensure_tokenizer(cache_dir: str | os.PathLike, tokenizer_path: str | None = None,
                     vocab_size: int = 1024) -> Tokenizer:
    """The tokenizer at `tokenizer_path`, or the cached world tokenizer (trained on first use)."""
    if tokenizer_path:
        return load_tokenizer(tokenizer_path)
    folder = Path(cache_dir) / f"tokenizer-{RECIPE_VERSION}-{TOKENIZER_VERSION}-{vocab_size}"
    path = folder / "tokenizer.json"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        # a fresh name the library creates itself, so the file gets the usual mode (0o666 less the
        # umask: a shared cache stays readable), then renamed into place atomically (concurrent
        # ranks never see a half-written file)
        tmp = folder / f"tokenizer.json.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            train_world_tokenizer(vocab_size).save(str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return load_tokenizer(path)
