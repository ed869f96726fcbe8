"""Reading torch files without running code from them.

A pickled file can name any Python callable and have it called while it loads. framelab reads
every checkpoint, weight and state file with `torch.load(weights_only=True)`, which accepts only
tensors, numbers, strings and plain containers, and refuses anything else with one line. A sharded
checkpoint (a folder written by torch's distributed checkpoint API, e.g. Lightning's FSDP
`last.ckpt/`) keeps its index in a `.metadata` pickle: that is read by an unpickler that allows
only the distributed-checkpoint classes it needs, and every non-tensor item stored in its shards
is checked with `weights_only=True` before anything else reads the folder.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

from framelab.errors import UserError

UNSAFE = ("holds pickled Python objects that could run code when loaded ({detail}); framelab "
          "loads only tensors and plain containers. Re-save the weights from a copy you trust")

# (module, name) pairs the index of a distributed checkpoint is made of
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_SHARDED_ALLOWED = {
    (_DCP_METADATA, n) for n in ("Metadata", "TensorStorageMetadata", "TensorProperties",
                                 "_MEM_FORMAT_ENCODING", "ChunkStorageMetadata",
                                 "BytesStorageMetadata", "MetadataIndex", "StorageMeta")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
     ("pathlib", "PurePosixPath"), ("collections", "OrderedDict")}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    for line in text:
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()[:160]
    first = text[0] if text else type(exc).__name__
    return first.split(". ")[0][:160]


def load_torch(source, where: str, mmap: bool = False):
    """`torch.load(source, weights_only=True)`; any failure is one UserError line naming `where`."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            raise UserError(f"{where}: {UNSAFE.format(detail=_first_line(exc))}") from None
        raise UserError(f"{where}: cannot be read as a torch file ({_first_line(exc)}); it is "
                        "truncated or corrupt") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a broken file
        raise UserError(f"{where}: cannot be read as a torch file ({type(exc).__name__}: "
                        f"{_first_line(exc)}); it is truncated or not a torch file") from None


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _SHARDED_ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def is_sharded(path: Path) -> bool:
    """A folder written by torch's distributed checkpoint API (it has a `.metadata` index)."""
    return path.is_dir() and (path / ".metadata").is_file()


def check_sharded(path: Path, where: str) -> dict:
    """Check a sharded checkpoint folder without running code from it: the index holds only
    distributed-checkpoint classes, every shard it names is present and long enough, every
    non-tensor item loads with weights_only, and so does Lightning's `meta.pt` beside it.
    Returns `meta.pt`'s contents ({} when there is none)."""
    try:
        with open(path / ".metadata", "rb") as f:
            index = _IndexUnpickler(f).load()
    except pickle.UnpicklingError as exc:
        raise UserError(f"{where}: {path / '.metadata'} "
                        f"{UNSAFE.format(detail=_first_line(exc))}") from None
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{where}: {path / '.metadata'} cannot be read ({type(exc).__name__}); "
                        "the sharded checkpoint is truncated or corrupt") from None
    kinds = getattr(index, "state_dict_metadata", None)
    storage = getattr(index, "storage_data", None)
    if not isinstance(kinds, dict) or not isinstance(storage, dict):
        raise UserError(f"{where}: {path / '.metadata'} is not a distributed-checkpoint index")
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    for key, info in storage.items():
        shard = path / str(info.relative_path)
        if shard.parent != path or not shard.is_file():
            raise UserError(f"{where}: shard {info.relative_path} named by the index is missing "
                            "from the folder; copy the whole checkpoint folder")
        if shard.stat().st_size < info.offset + info.length:
            raise UserError(f"{where}: shard {shard.name} is shorter than its index says; the "
                            "sharded checkpoint is truncated")
        if isinstance(kinds.get(key.fqn), BytesStorageMetadata):
            with open(shard, "rb") as f:
                f.seek(info.offset)
                load_torch(io.BytesIO(f.read(info.length)), f"{where}: {key.fqn} in {shard.name}")
    meta = path / "meta.pt"
    return load_torch(meta, f"{where}: {meta}") if meta.is_file() else {}
