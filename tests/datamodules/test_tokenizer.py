"""The world tokenizer's corpus is pinned: it is today's corpus exactly, a new task in
framelab.world.tasks leaves it alone, and the cache folder names both versions it depends on."""
import hashlib
import json
from types import SimpleNamespace

import framelab.world.tasks as tasks_mod
from framelab.datamodules import tokenizer as tokenizer_mod
from framelab.datamodules.tokenizer import (CORPUS, CORPUS_SPLITS, TOKENIZER_VERSION,
                                            ensure_tokenizer, world_corpus)
from framelab.world import RECIPE_VERSION
from framelab.world.scene import SPLITS
from framelab.world.tasks import resolve_params
from framelab.world.tasks.common import Sample

# sha256 of json.dumps(world_corpus()) per (RECIPE_VERSION, TOKENIZER_VERSION). ("world-3",
# "tok-1") is the corpus the tokenizer was trained on before the pin ("every task but caption and
# choose"), so the cached tokenizer stays byte-identical. A new world recipe that changes these
# tasks' text adds its own entry here; a new corpus takes a new TOKENIZER_VERSION.
GOLDEN = {("world-3", "tok-1"):
          "017f2a8a363af52472f9fc170a8bd09f7c1ecdef41b8879320761b81f58174f8"}


def _digest(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()


def test_pinned_corpus_is_the_recorded_one():
    key = (RECIPE_VERSION, TOKENIZER_VERSION)
    assert key in GOLDEN, f"no recorded corpus for {key}: record world_corpus()'s digest here"
    assert _digest(world_corpus()) == GOLDEN[key], (
        "the world tokenizer's corpus changed under the same versions; bump TOKENIZER_VERSION")


def test_corpus_names_known_tasks_splits_and_parameters():
    for task, params, replies in CORPUS:
        for reply in replies:
            resolve_params(task, {**params, "mcq_reply": reply} if reply else params)
    assert set(CORPUS_SPLITS) <= set(SPLITS)


def test_a_new_task_leaves_the_corpus_alone(monkeypatch):
    before = world_corpus(2)

    def make(split, index, cfg, render, world_seed):
        return Sample(key=f"zebra-{split}-{index}", task="zebra", split=split, index=index,
                      fps=1.0, conversation=[{"role": "user", "content": "zebra quagga okapi"}],
                      meta={"hint": "zebra"})

    zebra = SimpleNamespace(DEFAULTS={"mcq_reply": "letter"}, make=make)
    monkeypatch.setattr(tasks_mod, "_MODULES", {**tasks_mod._MODULES, "zebra": zebra})
    for module in (tasks_mod, tokenizer_mod):  # wherever a task list is read, it now has zebra
        monkeypatch.setattr(module, "TASKS", (*tasks_mod.TASKS, "zebra"), raising=False)
    assert tasks_mod.make_sample("zebra", "train", 0).task == "zebra"
    after = world_corpus(2)
    assert after == before
    assert not any("zebra" in text for text in after)


def test_cache_folder_names_the_recipe_and_tokenizer_versions(tmp_path, monkeypatch):
    trained = []
    real = tokenizer_mod.train_world_tokenizer

    def small(vocab_size):
        trained.append(vocab_size)
        return real(vocab_size, samples_per_task=1)

    monkeypatch.setattr(tokenizer_mod, "train_world_tokenizer", small)
    first = ensure_tokenizer(tmp_path, vocab_size=300)
    path = tmp_path / f"tokenizer-{RECIPE_VERSION}-{TOKENIZER_VERSION}-300" / "tokenizer.json"
    assert path.is_file() and trained == [300]
    again = ensure_tokenizer(tmp_path, vocab_size=300)
    assert trained == [300], "a cached tokenizer is loaded, not trained again"
    assert again.to_str() == first.to_str()


def test_training_is_deterministic():
    """Same corpus, same tokenizer: so pinning the corpus keeps the cached one byte-identical."""
    a = tokenizer_mod.train_world_tokenizer(300, samples_per_task=4)
    b = tokenizer_mod.train_world_tokenizer(300, samples_per_task=4)
    assert a.to_str() == b.to_str()
