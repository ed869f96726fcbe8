"""Task generators: each maps (split, index, params) to a `Sample`, deterministically.

    make_sample("needle", "train", 7, {"lengths": [256]})
"""
from __future__ import annotations

from framelab.world.tasks import caption, choose, cue, describe, future, images, needle, read
from framelab.world.tasks.common import Sample

_MODULES = {"describe": describe, "needle": needle, "future": future, "cue": cue, "images": images,
            "read": read, "caption": caption, "choose": choose}
TASKS = tuple(_MODULES)


def task_defaults(task: str) -> dict:
    """The documented default parameters of a task."""
    return dict(_module(task).DEFAULTS)


def resolve_params(task: str, params: dict | None) -> dict:
    """Defaults overlaid with `params`; unknown keys are an error (they would silently do nothing)."""
    defaults = task_defaults(task)
    unknown = sorted(set(params or {}) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for task {task!r}; known: {sorted(defaults)}")
    return {**defaults, **(params or {})}


def make_sample(task: str, split: str, index: int, params: dict | None = None,
                render: bool = True, world_seed: int = 0) -> Sample:
    """Sample `index` of `split` of `task`: a pure function of its arguments."""
    return _module(task).make(split, index, resolve_params(task, params), render, world_seed)


def _module(task: str):
    if task not in _MODULES:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return _MODULES[task]


__all__ = ["TASKS", "Sample", "make_sample", "resolve_params", "task_defaults"]
