"""Writing and finding checkpoints.

Writing: `AtomicCheckpointIO` writes each checkpoint to a temporary file in the same folder,
flushes it to disk and renames it over the target, so a checkpoint file is always complete
(a crash mid-write leaves only a stray temporary file, never a truncated checkpoint).

Finding, for `ckpt_path=last`: the newest complete checkpoint of this experiment — first in the
current run directory (so `hydra.run.dir=DIR ckpt_path=last` resumes in place), else in the most
recent earlier run under `runs/<experiment>/`. In a directory, `checkpoints/last.ckpt` is preferred;
if it cannot be read, the newest other readable checkpoint there is used, with a warning naming
both files.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from framelab.errors import UserError

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def readable(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - any failure means the file is not a usable checkpoint
        return False
    return True


def best_in(directory: Path) -> Path | None:
    """`checkpoints/last.ckpt` of a run directory, or its newest readable other checkpoint."""
    folder = directory / "checkpoints"
    if not folder.is_dir():
        return None
    last = folder / "last.ckpt"
    if last.exists() and readable(last):
        return last
    others = sorted((p for p in folder.glob("*.ckpt") if p.name != "last.ckpt"),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in others:
        if readable(candidate):
            if last.exists():
                log.warning("framelab: %s is unreadable (truncated or corrupt); resuming from %s "
                            "instead", last, candidate)
            return candidate
    if last.exists():
        log.warning("framelab: %s is unreadable and no other checkpoint there is usable", last)
    return None


def find_last(run_dir: Path) -> Path | None:
    siblings = sorted((p for p in run_dir.parent.iterdir() if p.is_dir() and p != run_dir),
                      reverse=True) if run_dir.parent.is_dir() else []
    for directory in [run_dir, *siblings]:
        found = best_in(directory)
        if found is not None:
            return found
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
    if not readable(path):
        raise UserError(f"ckpt_path={value}: the file cannot be read as a checkpoint (truncated "
                        "or corrupt); pass another checkpoint, or `last` to pick a complete one")
    return str(path)
