"""Decoding shard members: annotation JSON, frames (npy array or per-frame png/jpg), frame
selection under a frame budget, and resizing to the model's input size.

Every failure that concerns one sample raises `SampleError` with a short reason: bad_json,
missing_json, no_frames, missing_frame, bad_frame.
"""
from __future__ import annotations

import io
import json
import re

import numpy as np
import torch
import torch.nn.functional as F

from framelab.datamodules.reader import SampleError

_FRAME = re.compile(r"^(\d+)\.(png|jpg|jpeg)$")
SAMPLING = ("uniform", "fps", "all")


def annotation(members: dict) -> dict:
    """The sample's JSON document (must be an object)."""
    if "json" not in members:
        raise SampleError("missing_json")
    try:
        ann = json.loads(members["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SampleError("bad_json", str(e)) from None
    if not isinstance(ann, dict):
        raise SampleError("bad_json", "annotation is not a JSON object")
    return ann


class FrameSource:
    """Lazy access to a sample's frames stored under `prefix` ('' for the video, 'future.' ...)."""

    def __init__(self, members: dict, prefix: str = "", expected: int | None = None):
        self.array = None
        self.files: list[bytes] = []
        if f"{prefix}npy" in members:
            self.array = _npy_view(members[f"{prefix}npy"])
            n = self.array.shape[0]
        else:
            named = []
            for ext, data in members.items():
                m = _FRAME.match(ext[len(prefix):]) if ext.startswith(prefix) else None
                if m:
                    named.append((int(m.group(1)), data))
            named.sort(key=lambda x: x[0])
            if named and [i for i, _ in named] != list(range(len(named))):
                raise SampleError("missing_frame", "frame numbers are not contiguous")
            self.files = [d for _, d in named]
            n = len(self.files)
        if n == 0:
            raise SampleError("no_frames")
        if expected is not None and expected != n:
            raise SampleError("missing_frame", f"{n} frames stored, annotation says {expected}")
        self.count = n

    def frame_size(self) -> tuple[int, int]:
        """(H, W) of the stored frames (of the first one, read from its header when encoded)."""
        if self.array is not None:
            return int(self.array.shape[1]), int(self.array.shape[2])
        from PIL import Image
        try:
            with Image.open(io.BytesIO(self.files[0])) as im:
                return im.size[1], im.size[0]
        except Exception as e:  # noqa: BLE001 - PIL raises many types on bad data
            raise SampleError("bad_frame", f"frame 0: {e}") from None

    def get(self, indices: list[int]) -> np.ndarray:
        """uint8 (len(indices), H, W, 3)."""
        if self.array is not None:
            return self.array[np.asarray(indices)]
        cache: dict[int, np.ndarray] = {}
        out = []
        for i in indices:
            if i not in cache:
                try:
                    cache[i] = decode_image(self.files[i])
                except Exception as e:  # noqa: BLE001 - PIL raises many types on bad data
                    raise SampleError("bad_frame", f"frame {i}: {e}") from None
            out.append(cache[i])
        if len({f.shape for f in out}) > 1:
            raise SampleError("bad_frame", "frames of different sizes")
        return np.stack(out)


def decode_image(data: bytes) -> np.ndarray:
    """An encoded image (png, jpg, ...) as uint8 (H, W, 3)."""
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def frame_member(ext: str, prefix: str = "") -> bool:
    """Whether a member name holds frames stored under `prefix`."""
    return ext == f"{prefix}npy" or (ext.startswith(prefix) and _FRAME.match(ext[len(prefix):]) is not None)


_HEADERS: dict[bytes, tuple] = {}   # .npy header bytes -> (shape, fortran, dtype, data offset)


def _npy_header(data: bytes) -> tuple:
    """(shape, fortran order, dtype, data offset, item count) of a .npy member. Headers repeat from sample to
    sample (same frame count and size), so each distinct one is parsed once per process."""
    key = None
    if data[:6] == b"\x93NUMPY" and len(data) >= 12:
        start = 10 if data[6] == 1 else 12
        end = start + int.from_bytes(data[8:start], "little")
        key = bytes(data[:end])
        found = _HEADERS.get(key)
        if found is not None:
            return found
    buf = io.BytesIO(data)
    version = np.lib.format.read_magic(buf)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(buf)
    found = (shape, fortran, dtype, buf.tell(), int(np.prod(shape)))
    if key is not None and len(_HEADERS) < 4096 and buf.tell() == len(key):
        _HEADERS[key] = found
    return found


def _npy_view(data: bytes) -> np.ndarray:
    """Zero-copy view of a .npy member holding uint8 frames (T, H, W, 3) (or one frame H, W, 3)."""
    try:
        shape, fortran, dtype, offset, count = _npy_header(data)
        arr = np.frombuffer(data, dtype=dtype, offset=offset, count=count)
        arr = arr.reshape(shape, order="F" if fortran else "C")
    except Exception as e:  # noqa: BLE001 - malformed headers raise various errors
        raise SampleError("bad_frame", f"unreadable npy: {e}") from None
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise SampleError("bad_frame", f"npy frames must be uint8 (T, H, W, 3), got {arr.dtype} {arr.shape}")
    return arr


def select_frames(n: int, mode: str, max_frames: int, src_fps: float | None = None,
                  target_fps: float = 2.0) -> list[int]:
    """Indices of the frames to keep, an even count (the last repeated when needed; a single image
    becomes two identical frames), never more than max(2, max_frames rounded down to even).
    uniform: evenly spaced; fps: one frame per 1/target_fps seconds of video; all: every frame.
    Whenever a mode would exceed the budget it falls back to evenly spaced within its choice."""
    if mode not in SAMPLING:
        raise ValueError(f"unknown frame sampling {mode!r}; expected one of {SAMPLING}")
    budget = max(2, max_frames - max_frames % 2)
    if mode == "fps" and src_fps:
        step = max(src_fps / target_fps, 1.0)
        pool = np.unique(np.floor(np.arange(0, n, step)).astype(int)).tolist()
    else:
        pool = list(range(n))
    if mode != "all" or len(pool) > budget:
        k = min(len(pool), budget)
        pool = [pool[int((j + 0.5) * len(pool) / k)] for j in range(k)]
    if len(pool) % 2:
        pool.append(pool[-1])
    return pool


def as_float(video: torch.Tensor) -> torch.Tensor:
    """uint8 frames (as they leave the loader when stored at the model's size) -> float32 in
    [0, 1]; float frames are returned as they are."""
    return video.float().div_(255.0) if video.dtype == torch.uint8 else video


def to_tensor(frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, h, w) in [0, 1], resized (bilinear, antialiased)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    return x
