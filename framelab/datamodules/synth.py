"""Generate world shards: `synthesize` writes one task/split as WebDataset shards + manifest, and
`ensure_world_shards` keeps a cache of them keyed by task, split, recipe version and parameters,
generating on first use only. Task parameters are checked against the kind of their defaults
(`check_params`), so a bad value is one line, not a failure deep inside a generator.

Sample i of a split always has index i (so its seed is fixed by (task, split, i)); shard s holds the
contiguous indices [s*N/K, (s+1)*N/K).
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import math
import os
import shutil
import socket
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from framelab.datamodules.shards import ShardWriter, encode_frames, read_manifest, shard_entry, write_manifest
from framelab.errors import UserError
from framelab.world import RECIPE_VERSION
from framelab.world.scene import SPLITS, sample_seed
from framelab.world.tasks import TASKS, make_sample, resolve_params, task_defaults

FRAME_FORMATS = ("npy", "png", "jpg")


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """An explicit cache_dir wins; else $FRAMELAB_CACHE; else ./data_cache."""
    return Path(cache_dir or os.environ.get("FRAMELAB_CACHE") or "data_cache")


def check_params(task: str, params: dict | None) -> dict:
    """The task's defaults overlaid with `params`, each value checked against the kind of its
    default (an integer stays an integer, positive when the default is, ...; min_X <= max_X);
    anything else is a UserError naming the value and what would be right."""
    try:
        resolved = resolve_params(task, params)
    except ValueError as e:
        raise UserError(str(e)) from None
    defaults = task_defaults(task)
    for key, value in (params or {}).items():
        expected = _expected(key, value, defaults[key])
        if expected:
            raise UserError(f"task {task} parameter {key}={value!r}: expected {expected} "
                            f"(default {defaults[key]!r})")
    for key in resolved:
        top = "max_" + key[4:]
        if key.startswith("min_") and top in resolved and resolved[key] > resolved[top]:
            raise UserError(f"task {task} parameters {key}={resolved[key]!r} > {top}="
                            f"{resolved[top]!r}: expected {key} <= {top}")
    return resolved


def _expected(key: str, value, default) -> str | None:
    """What `value` should be, judged by its default, or None when it is fine."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        whole = number and isinstance(value, int)
        if default > 0:
            return None if whole and value > 0 else "a positive integer"
        if default == 0:
            return None if whole and value >= 0 else "an integer >= 0"
        return None if whole else "an integer"
    if isinstance(default, float):
        if key.endswith("_prob"):
            return None if number and 0 <= value <= 1 else "a probability in [0, 1]"
        if default > 0:
            return None if number and value > 0 else "a number > 0"
        if default == 0:
            return None if number and value >= 0 else "a number >= 0"
        return None if number else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    if isinstance(default, list) and default:  # items judged by the smallest default item
        item = min(default) if all(isinstance(d, (int, float)) for d in default) else default[0]
        wrong = not isinstance(value, list) or not value or any(_expected(key, v, item) for v in value)
        return f"a non-empty list, each item {_expected(key, None, item)}" if wrong else None  # None fits no kind
    return None


def sample_members(sample, frames_format: str) -> dict[str, bytes]:
    """Tar members of one generated sample (a text-only sample has no frame members)."""
    members = {"json": json.dumps(sample.annotation(), separators=(",", ":")).encode()}
    if sample.frames is not None:
        members.update(encode_frames(sample.frames, frames_format))
    for name, clip in sample.extra_frames.items():
        members.update(encode_frames(clip, frames_format, prefix=f"{name}."))
    if sample.gt:
        buf = io.BytesIO()
        np.savez_compressed(buf, **sample.gt)
        members["gt.npz"] = buf.getvalue()
    return members


def synthesize(task: str, out: str | os.PathLike, samples: int, shards: int = 1, split: str = "train",
               params: dict | None = None, frames_format: str = "npy", world_seed: int = 0,
               progress: bool = True) -> dict:
    """Write `samples` samples of task/split into `shards` tar files under `out`; returns the manifest."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if frames_format not in FRAME_FORMATS:
        raise UserError(f"unknown frame format {frames_format!r}; choose one of {', '.join(FRAME_FORMATS)}")
    if samples < 1 or not 1 <= shards <= samples:
        raise UserError(f"need samples >= 1 and 1 <= shards <= samples, got samples={samples} shards={shards}")
    if isinstance(world_seed, bool) or not isinstance(world_seed, int) or world_seed < 0:
        raise UserError(f"world seed {world_seed!r}: expected an integer >= 0")
    params = check_params(task, params)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    counts: dict[str, Counter] = {"qtype": Counter(), "format": Counter(), "frames": Counter()}
    entries = []
    bar = tqdm(total=samples, desc=f"synth {task}/{split}", unit="sample", disable=not progress)
    for s in range(shards):
        path = root / f"{task}-{split}-{s:06d}.tar"
        with ShardWriter(path) as writer:
            for index in range(s * samples // shards, (s + 1) * samples // shards):
                try:
                    sample = make_sample(task, split, index, params, world_seed=world_seed)
                except ValueError as e:  # how generators refuse parameters they cannot honour
                    raise UserError(f"task {task} cannot generate with parameters {params}: {e}") from None
                writer.write(sample.key, sample_members(sample, frames_format))
                counts["qtype"][str(sample.meta.get("qtype", task))] += 1
                counts["format"][str(sample.meta.get("format", ""))] += 1
                counts["frames"][str(0 if sample.frames is None else len(sample.frames))] += 1
                bar.update(1)
        entries.append(shard_entry(writer, root))
    bar.close()
    manifest = {
        "created_by": "framelab data synth", "recipe_version": RECIPE_VERSION, "task": task,
        "split": split, "params": params, "world_seed": world_seed, "frames_format": frames_format,
        "samples": samples, "seeds": {"first": sample_seed(split, 0), "last": sample_seed(split, samples - 1)},
        "counts": {k: dict(sorted(v.items())) for k, v in counts.items()}, "shards": entries,
    }
    write_manifest(root, manifest)
    return manifest


def cache_key(task: str, split: str, samples: int, shards: int, params: dict | None,
              frames_format: str, world_seed: int) -> str:
    """Folder name of a cached shard set: changes with the recipe version or any parameter."""
    blob = json.dumps({"samples": samples, "shards": shards, "params": resolve_params(task, params),
                       "format": frames_format, "world_seed": world_seed}, sort_keys=True)
    return f"{task}-{split}-{RECIPE_VERSION}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def ensure_world_shards(cache_dir, task: str, split: str, samples: int, shards: int = 1,
                        params: dict | None = None, frames_format: str = "npy", world_seed: int = 0,
                        progress: bool = False) -> Path:
    """Folder of the cached shard set, generated when missing or made by another recipe version.
    Generation happens in a private temporary folder (`<folder>.tmp-<host>-<pid>`) that is renamed
    into place, so concurrent processes never read a half-written set; the ones that interrupted
    generations on this host left behind are removed first."""
    shards = max(1, min(shards, samples))
    root = resolve_cache_dir(cache_dir)
    try:
        folder = root / cache_key(task, split, samples, shards, params, frames_format, world_seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    manifest = read_manifest(folder)
    if manifest is not None and manifest.get("recipe_version") == RECIPE_VERSION:
        return folder
    remove_stale_tmp(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    synthesize(task, tmp, samples, shards, split, params, frames_format, world_seed, progress)
    if folder.exists():  # stale (other recipe) or written concurrently: keep a complete current one
        if (read_manifest(folder) or {}).get("recipe_version") == RECIPE_VERSION:
            shutil.rmtree(tmp, ignore_errors=True)
            return folder
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if read_manifest(folder) is None:
            raise
    return folder


def remove_stale_tmp(folder: Path) -> None:
    """Delete `<folder>.tmp-[<host>-]<pid>` folders of this host whose process is gone. Folders of
    other hosts (a shared cache) are left alone: their pids mean nothing here."""
    host = socket.gethostname()
    prefix = f"{folder.name}.tmp-"
    for tmp in folder.parent.glob(glob.escape(prefix) + "*"):
        owner, _, pid = tmp.name[len(prefix):].rpartition("-")
        if owner in ("", host) and pid.isdigit() and int(pid) > 0 and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True
