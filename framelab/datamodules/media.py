"""Decoding real videos for `framelab data pack`: mp4/webm/... through PyAV, or a folder of frame
images. Frames are kept at a target rate (at most max_frames, spread evenly) and downscaled so the
shorter side is at most `size` (sides rounded to even). Failures raise `MediaError(reason)`.

Inputs are untrusted: the work per decoded frame is constant whatever its timestamp, the frames
held at once are at most 2 x max_frames whatever the clip's length, and `time_limit` bounds the
wall-clock time of one file (raising `DecodeTimeout`).
"""
from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class MediaError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class DecodeTimeout(BaseException):
    """Decoding one file ran past its time limit. A BaseException, like KeyboardInterrupt, so that
    the `except Exception` around library calls cannot mistake it for a decoding error."""


@contextmanager
def time_limit(seconds: float | None):
    """Raise `DecodeTimeout` in the body once `seconds` of wall-clock time have passed. Uses
    SIGALRM, so it applies in the main thread of a POSIX process only (elsewhere, or for None/0,
    there is no limit); a handler or timer set before is restored afterwards."""
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise DecodeTimeout(f"took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    started = time.monotonic()
    pending, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
        if pending:  # someone else's timer was running: give it back what is left of it
            left = pending - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), interval)


@dataclass
class Clip:
    frames: np.ndarray           # uint8 (T, H, W, 3)
    fps: float | None            # rate of the kept frames (None when unknown)
    source_fps: float | None
    duration: float | None       # seconds


def _target_size(w: int, h: int, size: int) -> tuple[int, int]:
    scale = min(1.0, size / min(w, h)) if size > 0 else 1.0
    return max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)


def _even_spread(n: int, k: int) -> list[int]:
    return list(range(n)) if n <= k else [int((j + 0.5) * n / k) for j in range(k)]


class FrameKeeper:
    """The frames of a stream at most one per slot of time, slots `1/fps` seconds wide to begin
    with; whenever 2 x max_frames are held, the slots double in width and only the first frame of
    each wider slot stays. So at any moment the kept frames are spread evenly over the time seen,
    at most 2 x max_frames are held, and deciding about a frame costs O(1) whatever its time."""

    def __init__(self, fps: float, max_frames: int):
        self.step = 1.0 / fps
        self.capacity = 2 * max(1, max_frames)
        self.stride = 1          # slot width in units of `step`
        self.start: float | None = None
        self.frames: list[np.ndarray] = []
        self.slots: list[int] = []   # each kept frame's slot in units of `step`

    def slot(self, t: float) -> int:
        """The frame at time t's slot in units of `step` (the first frame's is 0)."""
        if self.start is None:
            self.start = t
        return math.floor((t - self.start) / self.step + 1e-6)

    def wants(self, slot: int) -> bool:
        return not self.slots or slot // self.stride > self.slots[-1] // self.stride

    def add(self, slot: int, frame: np.ndarray) -> None:
        self.frames.append(frame)
        self.slots.append(slot)
        while len(self.frames) >= self.capacity:
            self.stride *= 2
            keep = [j for j, s in enumerate(self.slots)
                    if j == 0 or s // self.stride != self.slots[j - 1] // self.stride]
            self.frames = [self.frames[j] for j in keep]
            self.slots = [self.slots[j] for j in keep]


def decode_video(path: Path, fps: float, max_frames: int, size: int) -> Clip:
    """Frames of a video file at about `fps` frames per second (fewer for long clips: at most
    `max_frames`, spread evenly over the whole clip)."""
    import av
    keeper = FrameKeeper(fps, max_frames)
    last = -math.inf
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError("undecodable", "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            src_fps = float(rate) if rate else None
            dims = None
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / (src_fps or fps)
                if not math.isfinite(t):
                    raise MediaError("undecodable", f"frame {i} has time {t}")
                last = max(last, t)
                slot = keeper.slot(t)
                if not keeper.wants(slot):
                    continue
                if dims is None:
                    dims = _target_size(frame.width, frame.height, size)
                keeper.add(slot, frame.to_ndarray(width=dims[0], height=dims[1], format="rgb24"))
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV/FFmpeg raise many error types on bad files
        raise MediaError("undecodable", f"{type(e).__name__}: {e}") from None
    if not keeper.frames:
        raise MediaError("undecodable", "no frames decoded")
    pick = _even_spread(len(keeper.frames), max_frames)
    duration = (last - keeper.start) + 1.0 / (src_fps or fps)
    return Clip(np.stack([keeper.frames[i] for i in pick]), len(pick) / duration, src_fps, duration)


def read_frame_folder(path: Path, max_frames: int, size: int, fps: float | None) -> Clip:
    """Frames stored as image files in a folder (sorted by name); their rate is unknown unless given."""
    from PIL import Image
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MediaError("undecodable", "folder has no frame images")
    pick = _even_spread(len(files), max_frames)
    frames = []
    try:
        for i in pick:
            with Image.open(files[i]) as im:
                im = im.convert("RGB")
                im = im.resize(_target_size(*im.size, size), Image.BILINEAR)
                frames.append(np.asarray(im))
    except Exception as e:  # noqa: BLE001
        raise MediaError("undecodable", f"{files[i].name}: {e}") from None
    if len({f.shape for f in frames}) > 1:
        raise MediaError("undecodable", "frames of different sizes")
    kept_fps = fps * len(pick) / len(files) if fps else None
    return Clip(np.stack(frames), kept_fps, fps, len(files) / fps if fps else None)


def load_media(path: Path, fps: float, max_frames: int, size: int) -> Clip:
    """A video file, a single image (one frame) or a folder of frames."""
    if not path.exists():
        raise MediaError("missing_file", str(path))
    if path.is_dir():
        return read_frame_folder(path, max_frames, size, None)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path, size)
    return decode_video(path, fps, max_frames, size)


def read_image(path: Path, size: int) -> Clip:
    """One image as a one-frame clip."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            frame = np.asarray(im.resize(_target_size(*im.size, size), Image.BILINEAR))
    except Exception as e:  # noqa: BLE001
        raise MediaError("undecodable", f"{path.name}: {e}") from None
    return Clip(frame[None], None, None, None)
