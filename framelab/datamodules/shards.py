"""WebDataset tar shards: writing them, indexing them, and the manifest that describes a set.

A sample is the group of consecutive tar members sharing a key (the name up to the first dot):
`KEY.json` (annotation), frames as `KEY.npy` (one uint8 array T x H x W x 3) or `KEY.000.png`,
`KEY.001.png`, ... (one image per frame, png or jpg), and optional extras such as
`KEY.future.npy` or `KEY.gt.npz`. Any WebDataset reader can stream these shards.

The index records, per sample, each member's byte offset and size inside its tar, so a sample can
be read by seeking (what exact resume needs), and the CRC-32 of each member's bytes as written, so
bytes damaged later are caught when read. `manifest.json` holds the index plus counts, seeds and
recipe version; for tars without a manifest the index is rebuilt by scanning tar headers (without
checksums). Format 1 manifests (before checksums) are read as they are.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from framelab.errors import UserError

MANIFEST = "manifest.json"
FORMAT_VERSION = 2   # 2: per-sample "crc32" {ext: CRC-32 of the member's bytes}


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
    """Writes samples into one tar (deterministic headers: mtime 0, fixed owner), noting the CRC-32
    of every member it writes (`checksums[key][ext]`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tar = tarfile.open(self.path, "w", format=tarfile.GNU_FORMAT)
        self.count = 0
        self.checksums: dict[str, dict[str, int]] = {}

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if "." in key.rpartition("/")[2]:
            raise ValueError(f"sample key {key!r} contains a dot; WebDataset would split it")
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uname = info.gname = "framelab"
            self._tar.addfile(info, io.BytesIO(data))
        self.checksums[key] = {ext: zlib.crc32(data) for ext, data in members.items()}
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


def shard_entry(writer: ShardWriter, root: Path) -> dict:
    """Manifest entry of one written (closed) shard: relative name, size in bytes, sample index
    with the members' checksums."""
    path = writer.path
    samples, error = scan_tar(path)
    if error:
        raise OSError(f"shard {path} unreadable right after writing: {error}")
    for s in samples:
        s["crc32"] = {ext: writer.checksums[s["key"]][ext] for ext in s["members"]}
    return {"name": str(path.relative_to(root)), "bytes": path.stat().st_size, "samples": samples}


def write_manifest(root: str | os.PathLike, manifest: dict) -> Path:
    """Write manifest.json atomically (its presence marks a complete shard set)."""
    path = Path(root) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"format_version": FORMAT_VERSION, **manifest}, indent=1))
    os.replace(tmp, path)
    return path


def read_manifest(root: str | os.PathLike) -> dict | None:
    """The manifest of a shard folder, or None when there is none; one that cannot be used (not
    JSON, or without a well-formed shard index) is a one-line UserError naming the file."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    remedy = ("; expected a manifest written by `framelab data synth` or `framelab data pack`: write "
              "the folder again (a cached world set: delete the folder and it is generated again)")
    try:
        manifest = json.loads(path.read_bytes())
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}){remedy}") from None
    problem = manifest_problem(manifest)
    if problem:
        raise UserError(f"{path}: {problem}{remedy}")
    return manifest


def manifest_problem(manifest) -> str | None:
    """What makes a manifest's shard index unusable, or None when it is fine."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        return "no 'shards' list"
    for i, shard in enumerate(shards):
        where = f"shards[{i}]"
        if not isinstance(shard, dict) or not isinstance(shard.get("name"), str):
            return f"{where} has no 'name'"
        name = Path(shard["name"])
        if name.is_absolute() or ".." in name.parts:
            return f"{where}.name {shard['name']!r} is not a path inside the folder"
        if not isinstance(shard.get("samples"), list):
            return f"{where} has no 'samples' list"
        for j, sample in enumerate(shard["samples"]):
            problem = _sample_problem(sample)
            if problem:
                return f"{where}.samples[{j}] {problem}"
    return None


def _sample_problem(sample) -> str | None:
    if not isinstance(sample, dict) or not isinstance(sample.get("key"), str):
        return "has no 'key'"
    members = sample.get("members")
    if not isinstance(members, dict):
        return "has no 'members' object"
    for ext, span in members.items():
        if not (isinstance(span, list) and len(span) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in span)):
            return f"member {ext!r} is not [offset, size] (two non-negative integers)"
    sums = sample.get("crc32", {})
    if not isinstance(sums, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in sums.values()):
        return "has a 'crc32' that is not {member: integer}"
    return None
