"""Finding checkpoints: what `ckpt_path=last` means.

`last` is the newest complete `checkpoints/last.ckpt` of this experiment: first in the current run
directory (when `hydra.run.dir` names an earlier run, it resumes in place), else in the most recent
sibling run directory under `runs/<experiment>/` that has one. A checkpoint is complete when
torch can read it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from framelab.errors import UserError

log = logging.getLogger(__name__)


def readable(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - any failure means the file is not a usable checkpoint
        return False
    return True


def find_last(run_dir: Path) -> Path | None:
    candidates = [run_dir] + sorted((p for p in run_dir.parent.iterdir()
                                     if p.is_dir() and p != run_dir), reverse=True)
    for directory in candidates:
        path = directory / "checkpoints" / "last.ckpt"
        if path.exists():
            if readable(path):
                return path
            log.warning("skipping unreadable checkpoint %s", path)
    return None


def resolve_ckpt_path(value, run_dir: Path) -> str | None:
    if value in (None, ""):
        return None
    if value == "last":
        found = find_last(Path(run_dir))
        if found is None:
            raise UserError(f"ckpt_path=last: no complete checkpoints/last.ckpt under "
                            f"{Path(run_dir).parent}; train first, or pass a .ckpt path")
        return str(found)
    path = Path(str(value))
    if not path.exists():
        raise UserError(f"ckpt_path={value}: no such file; give an existing .ckpt or `last`")
    return str(path)
