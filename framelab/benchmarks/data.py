"""`framelab bench data [--json PATH] [--samples N]`: samples/s of each datamodule, per worker
(num_workers=0 and one torch thread: the one process does everything, as one DataLoader
worker would), against a raw loop that only reads and decodes the same samples' members (JSON +
frames) in the same order. ratio_vs_raw = datamodule / raw.

Workloads: the world's default describe clips (8 npy frames, 32x32) and clips of 16 jpg frames at
128x128 (what `framelab data pack` writes) through VideoTextDataModule (frame selection, tensors,
chat tokenization, packing), 32x32 images through ImageTokenDataModule (token grids computed once,
token_grids.py), and the describe clips streamed from a local HTTP server (127.0.0.1) through the
shard cache, against a raw webdataset loop (`webdataset.WebDataset`) over the same URLs. Where
decoding is nearly free (npy), the ratio shows the datamodule's own per-sample cost. Frames leave
the datamodule as uint8 (they become float on the device), so that conversion is not timed.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import io
import json
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from framelab.benchmarks._common import machine, print_table, write_json
from framelab.datamodules.decode import decode_image, frame_member
from framelab.datamodules.image_tokens import ImageTokenDataModule
from framelab.datamodules.order import epoch_order
from framelab.datamodules.video_text import VideoTextDataModule


def decode_members(members: dict) -> None:
    """What a plain loop does with a sample: the JSON parsed, the frames decoded to arrays."""
    json.loads(members["json"])
    for ext, data in members.items():
        if ext.endswith(".png") or ext.endswith(".jpg"):
            decode_image(data)
        elif ext.endswith("npy"):
            np.load(io.BytesIO(data))


def raw_pass(shards, seed: int) -> int:
    """Read and decode, in the epoch-0 order, each sample's JSON and frames. Returns samples read."""
    for i in epoch_order(len(shards), seed, 0):
        ref = shards.refs[int(i)]
        decode_members(shards.read(int(i), [e for e in ref.members if e == "json" or frame_member(e)]))
    return len(shards)


def raw_webdataset_pass(urls: list[str]) -> int:
    """A plain webdataset loop over the URLs: stream each tar, decode each sample's members."""
    import webdataset as wds
    n = 0
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        decode_members({k: v for k, v in sample.items() if not k.startswith("__")})
        n += 1
    return n


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


def measure(name: str, dm, repeat: int, raw_fn=None) -> dict:
    dm.prepare_data()
    dm.setup("fit")
    shards = dm.shard_set("train")
    raw, ours = rates(raw_fn or (lambda: raw_pass(shards, dm.seed)), lambda: dm_pass(dm), repeat)
    return {"datamodule": name, "samples": len(shards), "raw_samples_per_s": round(raw, 1),
            "dm_samples_per_s": round(ours, 1), "ratio_vs_raw": round(ours / raw, 3)}


@contextmanager
def http_server(folder):
    """Base URL of `folder` served over HTTP on 127.0.0.1 (stopped on exit)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def remote_row(world: VideoTextDataModule, cache: str, repeat: int) -> dict:
    """The world row's shards over local HTTP: the datamodule through the shard cache (every pass
    downloads again: copies are evicted after use) vs webdataset's own loop."""
    folder = world.shard_set("train").paths[0].parent
    names = [Path(p).name for p in world.shard_set("train").paths]
    with http_server(folder) as base:
        urls = [f"{base}/{n}" for n in names]
        dm = VideoTextDataModule(data_dir=urls, max_frames=8, cache_dir=cache, tokenizer_path=None,
                                 cache_limit="1GB", shuffle="blocks", shuffle_window=2)
        return measure("VideoText over HTTP (world default, shard cache, blocks of 2)", dm, repeat,
                       lambda: raw_webdataset_pass(urls))


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
                measure("ImageToken: 32x32 npy, VQ 8x8", images, a.repeat),
                remote_row(world, cache, a.repeat)]
    torch.set_num_threads(threads)
    print_table(rows, ["datamodule", "samples", "raw_samples_per_s", "dm_samples_per_s", "ratio_vs_raw"])
    write_json(a.json, {"benchmark": "data", "machine": machine(), "workers": 0, "results": rows})
    return 0
