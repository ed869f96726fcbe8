"""WebDataset tar shards: writing them, indexing them, and the manifest that describes a set.

A sample is the group of consecutive tar members sharing a key (the name up to the first dot):
`KEY.json` (annotation), frames as `KEY.npy` (one uint8 array T x H x W x 3) or `KEY.000.png`,
`KEY.001.png`, ... (one image per frame, png or jpg), and optional extras such as
`KEY.future.npy` or `KEY.gt.npz`. Any WebDataset reader can stream these shards.

The index records, per sample, each member's byte offset and size inside its tar, so a sample can
be read by seeking (what exact resume needs). `manifest.json` holds the index plus counts, seeds
and recipe version; for tars without a manifest the index is rebuilt by scanning tar headers.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def split_name(name: str) -> tuple[str, str]:
    """'dir/KEY.ext.more' -> ('dir/KEY', 'ext.more') as WebDataset groups members."""
    folder, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext


def encode_frames(frames: np.ndarray, fmt: str, prefix: str = "") -> dict[str, bytes]:
    """Members for uint8 frames (T, H, W, 3): {'npy': array} or {'000.png': ..., ...}."""
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(frames), allow_pickle=False)
        return {f"{prefix}npy": buf.getvalue()}
    from PIL import Image
    out = {}
    for t, frame in enumerate(frames):
        buf = io.BytesIO()
        if fmt == "png":
            Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
        elif fmt == "jpg":
            Image.fromarray(frame).save(buf, format="JPEG", quality=90)
        else:
            raise ValueError(f"unknown frame format {fmt!r}; expected npy, png or jpg")
        out[f"{prefix}{t:03d}.{fmt}" if len(frames) <= 1000 else f"{prefix}{t:06d}.{fmt}"] = buf.getvalue()
    return out


class ShardWriter:
    """Writes samples into one tar (deterministic headers: mtime 0, fixed owner)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tar = tarfile.open(self.path, "w", format=tarfile.GNU_FORMAT)
        self.count = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if "." in key.rpartition("/")[2]:
            raise ValueError(f"sample key {key!r} contains a dot; WebDataset would split it")
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uname = info.gname = "framelab"
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> None:
        self._tar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def scan_tar(path: str | os.PathLike) -> tuple[list[dict], str | None]:
    """Index of one tar: [{'key', 'members': {ext: [offset, size]}}] in file order, plus an error
    message when the tar is damaged (the samples before the damage are still indexed; a sample cut
    by the damage is dropped)."""
    samples: list[dict] = []
    error = None
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, ext = split_name(m.name)
                if not samples or samples[-1]["key"] != key:
                    samples.append({"key": key, "members": {}})
                samples[-1]["members"][ext] = [m.offset_data, m.size]
    except (tarfile.TarError, EOFError, OSError) as e:
        error = f"{type(e).__name__}: {e}"
    size = os.path.getsize(path)
    if samples and any(off + n > size for off, n in samples[-1]["members"].values()):
        samples.pop()
        error = error or "truncated tar"
    return samples, error


def shard_entry(path: Path, root: Path) -> dict:
    """Manifest entry of one written shard: relative name, size in bytes, sample index."""
    samples, error = scan_tar(path)
    if error:
        raise OSError(f"shard {path} unreadable right after writing: {error}")
    return {"name": str(path.relative_to(root)), "bytes": path.stat().st_size, "samples": samples}


def write_manifest(root: str | os.PathLike, manifest: dict) -> Path:
    """Write manifest.json atomically (its presence marks a complete shard set)."""
    path = Path(root) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"format_version": FORMAT_VERSION, **manifest}, indent=1))
    os.replace(tmp, path)
    return path


def read_manifest(root: str | os.PathLike) -> dict | None:
    """The manifest of a shard folder, or None when there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())
