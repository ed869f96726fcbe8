"""`framelab bench data [--json PATH] [--samples N]`: samples/s of each datamodule, per worker
(num_workers=0 and one torch thread: the one process does everything, as one DataLoader
worker would), against a raw loop that only reads and decodes
the same shard members (JSON + frames) in the same order. ratio_vs_raw = datamodule / raw.

Workloads: the world's default describe clips (8 npy frames, 32x32) and clips of 16 jpg frames at
128x128 (what `framelab data pack` writes) through VideoTextDataModule (frame selection, tensors,
chat tokenization, packing), and 32x32 images through ImageTokenDataModule (VQ encoding). Where
decoding is nearly free (npy), the ratio shows the datamodule's own per-sample cost.
"""
from __future__ import annotations

import argparse
import io
import json
import tempfile
import time

import numpy as np
import torch

from framelab.benchmarks._common import machine, print_table, write_json
from framelab.datamodules.decode import decode_image
from framelab.datamodules.image_tokens import ImageTokenDataModule
from framelab.datamodules.stream import epoch_order
from framelab.datamodules.video_text import VideoTextDataModule


def raw_pass(shards, seed: int, wants) -> int:
    """Read and decode, in the epoch-0 order, every member the datamodule reads (`wants`): the
    JSON parsed, frames decoded to arrays. Returns samples read."""
    for i in epoch_order(len(shards), seed, 0):
        ref = shards.refs[int(i)]
        members = shards.read(int(i), [e for e in ref.members if wants(e)])
        json.loads(members["json"])
        for ext, data in members.items():
            if ext.endswith(".png") or ext.endswith(".jpg"):
                decode_image(data)
            elif ext.endswith("npy"):
                np.load(io.BytesIO(data))
    return len(shards)


def dm_pass(dm) -> int:
    """One training epoch through the datamodule; returns samples delivered."""
    n = 0
    for batch in dm.train_dataloader():
        dm.on_before_batch_transfer(batch, 0)
        n += len(batch["sample_ids"])
    dm.state.consumed = dm.state.epoch = 0  # the next pass reads the same epoch again
    return n


def rates(raw_fn, dm_fn, repeat: int) -> tuple[float, float]:
    """Best samples/s of each over `repeat` alternating passes (after one warm-up pass each), so
    both see the same machine load."""
    raw_fn(), dm_fn()
    best = [0.0, 0.0]
    for _ in range(repeat):
        for k, fn in enumerate((raw_fn, dm_fn)):
            t0 = time.perf_counter()
            n = fn()
            best[k] = max(best[k], n / (time.perf_counter() - t0))
    return best[0], best[1]


def measure(name: str, dm, repeat: int) -> dict:
    dm.prepare_data()
    dm.setup("fit")
    shards = dm.shard_set("train")
    wants = dm._transform("train").wants
    raw, ours = rates(lambda: raw_pass(shards, dm.seed, wants), lambda: dm_pass(dm), repeat)
    return {"datamodule": name, "samples": len(shards), "raw_samples_per_s": round(raw, 1),
            "dm_samples_per_s": round(ours, 1), "ratio_vs_raw": round(ours / raw, 3)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="framelab bench data", description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--samples", type=int, default=256, help="samples per workload")
    p.add_argument("--repeat", type=int, default=5, help="alternating timed passes per workload")
    p.add_argument("--cache-dir", default=None, help="where the benchmark shards go (default: a temp dir)")
    a = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one process = one worker, single-threaded as DataLoader workers are
    with tempfile.TemporaryDirectory() as tmp:
        cache = a.cache_dir or tmp
        common = dict(samples={"train": a.samples}, shards=4, cache_dir=cache)
        world = VideoTextDataModule(tasks=["describe"], max_frames=8, **common)
        jpg = VideoTextDataModule(tasks=["describe"], task_params={"describe": {"frames": 16, "size": 128}},
                                  frames_format="jpg", image_size=128, max_frames=16, max_tokens=8192, **common)
        images = ImageTokenDataModule(fit_samples=min(a.samples, 512), batch_size=32, **common)
        rows = [measure("VideoText: world default (8 npy frames 32x32, packed)", world, a.repeat),
                measure("VideoText: 16 jpg frames 128x128, packed", jpg, a.repeat),
                measure("ImageToken: 32x32 npy, VQ 8x8", images, a.repeat)]
    torch.set_num_threads(threads)
    print_table(rows, ["datamodule", "samples", "raw_samples_per_s", "dm_samples_per_s", "ratio_vs_raw"])
    write_json(a.json, {"benchmark": "data", "machine": machine(), "workers": 0, "results": rows})
    return 0
