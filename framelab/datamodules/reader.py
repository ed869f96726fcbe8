"""Random access to the samples of one or more shard sets.

`ShardSet` concatenates the sample indexes of its folders (manifest order; or sorted *.tar names,
scanned, when a folder has no manifest) and of its remote shards (`remote.RemoteShard`: a URL and
its index) into one global list, and reads any sample's members by seeking into its tar. A remote
shard is read from its copy in the shard cache (`shard_cache.ShardReader`, one per process): a
stream tells the set the order in which it will read (`plan`, `advance`), so the next shards are
downloaded ahead and each one is let go of after its last read. Problems with one sample raise `SampleError(reason)`, which streams turn
into counted skips -- among them `checksum`, bytes that differ from those written (when the
manifest records members' CRC-32); problems with the whole set (no shards at all, an unusable
manifest) raise `UserError`.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from framelab.datamodules.shards import read_manifest, scan_tar
from framelab.errors import UserError

if TYPE_CHECKING:
    from framelab.datamodules.shard_cache import CacheConfig


class SampleError(Exception):
    """One sample cannot be used; `reason` is a short label (truncated, bad_json, bad_frame, ...)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class SampleRef:
    shard: int
    key: str
    members: dict                                  # ext -> [offset, size]
    crc32: dict = field(default_factory=dict)      # ext -> CRC-32 as written (none: not checked)


class ShardSet:
    """All samples of the given shard folders (or single .tar files) and remote shards, in a fixed
    order; `cache` says where and how remote shards are cached."""

    def __init__(self, roots, cache: CacheConfig | None = None):
        roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
        self.paths: list[Path | str] = []
        self.refs: list[SampleRef] = []
        self.counts: list[int] = []                     # samples per shard
        self.manifests: list[dict] = []
        self.scan_errors: dict[str, str] = {}
        self.urls: dict[int, str] = {}                  # remote shards: index -> URL
        self.sizes: dict[int, int | None] = {}          # remote shards: bytes (None: not known)
        self.cache = cache
        for root in roots:
            if hasattr(root, "url"):
                self._add_shard(root.url, root.samples, remote_bytes=root.bytes)
            else:
                self._add(Path(root))
        if not self.refs:
            raise UserError(f"no samples found in {', '.join(map(str, roots))}; expected WebDataset "
                            "*.tar shards (e.g. from `framelab data synth` or `framelab data pack`)")
        self.names = [str(p) for p in self.paths]      # shard names as items carry them
        if self.urls and cache is None:
            raise ValueError("a ShardSet with remote shards needs a CacheConfig")
        self._files: dict[int, object] = {}
        self._reader_obj = None
        self._pid = os.getpid()

    def _add(self, root: Path) -> None:
        manifest = read_manifest(root) if root.is_dir() else None
        if manifest is not None:
            self.manifests.append(manifest)
            entries = [(root / s["name"], s["samples"]) for s in manifest["shards"]]
        else:
            tars = sorted(root.glob("*.tar")) if root.is_dir() else [root]
            if not root.exists() or not tars:
                raise UserError(f"shard folder {root} has no manifest.json and no *.tar files")
            entries = []
            for tar in tars:
                samples, error = scan_tar(tar)
                if error:
                    self.scan_errors[str(tar)] = error
                entries.append((tar, samples))
        for path, samples in entries:
            self._add_shard(path, samples)

    def _add_shard(self, where, samples: list, remote_bytes: int | None = None) -> None:
        self.paths.append(where)
        shard = len(self.paths) - 1
        if isinstance(where, str):
            self.urls[shard], self.sizes[shard] = where, remote_bytes
        self.counts.append(len(samples))
        self.refs.extend(SampleRef(shard, s["key"], s["members"], s.get("crc32", {})) for s in samples)

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def remote(self) -> bool:
        return bool(self.urls)

    def shard_name(self, i: int) -> str:
        return self.names[self.refs[i].shard]

    def _reader(self):
        """This process's reader of the shard cache (a forked worker makes its own)."""
        self._check_pid()
        if self._reader_obj is None:
            from framelab.datamodules.shard_cache import ShardReader
            self._reader_obj = ShardReader(self.cache, self.urls, self.sizes)
        return self._reader_obj

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked into a worker: never share file offsets or threads
            self._files, self._reader_obj, self._pid = {}, None, os.getpid()

    def plan(self, indices) -> None:
        """This process will read these samples in this order (remote shards are fetched ahead)."""
        if self.urls:
            self._reader().plan([self.refs[int(i)].shard for i in indices])

    def advance(self, k: int) -> None:
        """About to read entry k of the plan."""
        if self.urls:
            self._reader().advance(k)

    def _file(self, shard: int):
        """(open file, its size) of a shard."""
        self._check_pid()
        if shard in self.urls:
            return self._reader().file(shard)
        opened = self._files.get(shard)
        if opened is None:
            try:
                f = open(self.paths[shard], "rb")
            except OSError as e:
                raise SampleError("missing_shard", str(e)) from None
            opened = self._files[shard] = (f, os.fstat(f.fileno()).st_size)
        return opened

    def read(self, i: int, exts=None) -> dict[str, bytes]:
        """Members {ext: bytes} of sample i (only `exts` when given)."""
        ref = self.refs[i]
        f, file_size = self._file(ref.shard)
        try:
            return self._members(f, file_size, ref, exts)
        finally:
            if ref.shard in self.urls:
                self._reader().done_reading(ref.shard)

    def _members(self, f, file_size: int, ref: SampleRef, exts) -> dict[str, bytes]:
        out = {}
        for ext, (offset, size) in ref.members.items():
            if exts is not None and ext not in exts:
                continue
            where = f"{ext} of {ref.key} in {self.paths[ref.shard]}"
            if offset + size > file_size:
                raise SampleError("truncated", where)
            f.seek(offset)
            data = f.read(size)
            if len(data) != size:
                raise SampleError("truncated", where)
            crc = ref.crc32.get(ext)
            if crc is not None and zlib.crc32(data) != crc:
                raise SampleError("checksum", f"{where}: bytes differ from those written")
            out[ext] = data
        return out

    def close(self) -> None:
        self._check_pid()
        for f, _ in self._files.values():
            f.close()
        self._files = {}
        if self._reader_obj is not None and self._pid == os.getpid():
            self._reader_obj.close()
        self._reader_obj = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"], state["_reader_obj"] = {}, None
        return state
