"""Random access to the samples of one or more shard sets.

`ShardSet` concatenates the sample indexes of its folders (manifest order; or sorted *.tar names,
scanned, when a folder has no manifest) into one global list, and reads any sample's members by
seeking into its tar. Problems with one sample raise `SampleError(reason)`, which streams turn
into counted skips -- among them `checksum`, bytes that differ from those written (when the
manifest records members' CRC-32); problems with the whole set (no shards at all, an unusable
manifest) raise `UserError`.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from framelab.datamodules.shards import read_manifest, scan_tar
from framelab.errors import UserError


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
    """All samples of the given shard folders (or single .tar files), in a fixed order."""

    def __init__(self, roots):
        roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
        self.paths: list[Path] = []
        self.refs: list[SampleRef] = []
        self.manifests: list[dict] = []
        self.scan_errors: dict[str, str] = {}
        for root in roots:
            self._add(Path(root))
        if not self.refs:
            raise UserError(f"no samples found in {', '.join(map(str, roots))}; expected WebDataset "
                            "*.tar shards (e.g. from `framelab data synth` or `framelab data pack`)")
        self._files: dict[int, object] = {}
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
            self.paths.append(path)
            shard = len(self.paths) - 1
            self.refs.extend(SampleRef(shard, s["key"], s["members"], s.get("crc32", {})) for s in samples)

    def __len__(self) -> int:
        return len(self.refs)

    def shard_name(self, i: int) -> str:
        return str(self.paths[self.refs[i].shard])

    def _file(self, shard: int):
        """(open file, its size) of a shard."""
        if self._pid != os.getpid():  # forked into a worker: never share file offsets
            self._files, self._pid = {}, os.getpid()
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
        for f, _ in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = {}
        return state
