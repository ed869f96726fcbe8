"""Image token grids computed once per shard set and image tokenizer, so training reads a sample's
grid instead of decoding and quantising its image again every epoch.

`ensure_grids` encodes every sample of a local shard set in batches (one pass, at data
preparation) and keeps the result in `<cache_dir>/grids-<digest>.npz`: `tokens` (N, h*w) in the
set's sample order and `reasons` (N,) ("" or why the sample could not be used: bad_frame, ...).
The digest covers the tokenizer file's bytes, the image size and every shard's path, size and
modification time, so new data or a new tokenizer get new grids. Arrays only: nothing in the file
can run code. Remote shard sets are not pre-encoded (that would read the whole set once more);
their images are encoded as they are read.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from framelab.datamodules.reader import SampleError, ShardSet

BATCH = 256


class Grids:
    """A set's grids: `lookup(ref)` -> tokens (h*w,) int64, or SampleError(reason)."""

    def __init__(self, tokens: np.ndarray, reasons: np.ndarray, shards: ShardSet):
        self.tokens, self.reasons = tokens, reasons
        self.rows = {(r.shard, r.key): i for i, r in enumerate(shards.refs)}

    def lookup(self, ref) -> np.ndarray:
        row = self.rows[(ref.shard, ref.key)]
        if self.reasons[row]:
            raise SampleError(str(self.reasons[row]), "when its tokens were computed")
        return self.tokens[row].astype(np.int64)


def grids_file(cache_dir: Path, shards: ShardSet, tokenizer_file: Path, image_size: int) -> Path:
    h = hashlib.sha1(Path(tokenizer_file).read_bytes())
    h.update(str(image_size).encode())
    for p in shards.paths:
        st = os.stat(p)
        h.update(f"|{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return Path(cache_dir) / f"grids-{h.hexdigest()[:16]}.npz"


def ensure_grids(cache_dir: Path, shards: ShardSet, tokenizer, tokenizer_file: Path, image_size: int,
                 image) -> Grids:
    """The set's grids, computed (and kept) when missing. `image(members) -> uint8 (1, S, S, 3)`."""
    path = grids_file(cache_dir, shards, tokenizer_file, image_size)
    try:
        with np.load(path, allow_pickle=False) as z:
            return Grids(z["tokens"], z["reasons"], shards)
    except (OSError, KeyError, ValueError):
        pass
    tokens, reasons = None, [""] * len(shards)
    for start in range(0, len(shards), BATCH):
        rows, images = [], []
        for i in range(start, min(start + BATCH, len(shards))):
            try:
                images.append(image(shards.read(i)))
                rows.append(i)
            except SampleError as e:
                reasons[i] = e.reason
        if not images:
            continue
        encoded = tokenizer.encode(np.concatenate(images))
        if tokens is None:
            tokens = np.zeros((len(shards), encoded.shape[1]), np.int32)
        tokens[rows] = encoded
    if tokens is None:
        tokens = np.zeros((len(shards), 0), np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, tokens=tokens, reasons=np.asarray(reasons))
    os.replace(tmp, path)
    return Grids(tokens, np.asarray(reasons), shards)
