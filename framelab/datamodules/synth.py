"""Generate world shards: `synthesize` writes one task/split as WebDataset shards + manifest, and
`ensure_world_shards` keeps a cache of them keyed by task, split, recipe version and parameters,
generating on first use only.

Sample i of a split always has index i (so its seed is fixed by (task, split, i)); shard s holds the
contiguous indices [s*N/K, (s+1)*N/K).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from framelab.datamodules.shards import ShardWriter, encode_frames, read_manifest, shard_entry, write_manifest
from framelab.errors import UserError
from framelab.world import RECIPE_VERSION
from framelab.world.scene import SPLITS, sample_seed
from framelab.world.tasks import TASKS, make_sample, resolve_params

FRAME_FORMATS = ("npy", "png", "jpg")


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """An explicit cache_dir wins; else $FRAMELAB_CACHE; else ./data_cache."""
    return Path(cache_dir or os.environ.get("FRAMELAB_CACHE") or "data_cache")


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
    try:
        params = resolve_params(task, params)
    except ValueError as e:
        raise UserError(str(e)) from None
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    counts: dict[str, Counter] = {"qtype": Counter(), "format": Counter(), "frames": Counter()}
    entries = []
    bar = tqdm(total=samples, desc=f"synth {task}/{split}", unit="sample", disable=not progress)
    for s in range(shards):
        path = root / f"{task}-{split}-{s:06d}.tar"
        with ShardWriter(path) as writer:
            for index in range(s * samples // shards, (s + 1) * samples // shards):
                sample = make_sample(task, split, index, params, world_seed=world_seed)
                writer.write(sample.key, sample_members(sample, frames_format))
                counts["qtype"][str(sample.meta.get("qtype", task))] += 1
                counts["format"][str(sample.meta.get("format", ""))] += 1
                counts["frames"][str(0 if sample.frames is None else len(sample.frames))] += 1
                bar.update(1)
        entries.append(shard_entry(path, root))
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
    Generation happens in a private temporary folder that is renamed into place, so concurrent
    processes never read a half-written set."""
    shards = max(1, min(shards, samples))
    root = resolve_cache_dir(cache_dir)
    try:
        folder = root / cache_key(task, split, samples, shards, params, frames_format, world_seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    manifest = read_manifest(folder)
    if manifest is not None and manifest.get("recipe_version") == RECIPE_VERSION:
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
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
