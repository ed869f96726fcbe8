"""Decoding real videos for `framelab data pack`: mp4/webm/... through PyAV, or a folder of frame
images. Frames are kept at a target rate (at most max_frames, spread evenly) and downscaled so the
shorter side is at most `size` (sides rounded to even). Failures raise `MediaError(reason)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class MediaError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


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


def decode_video(path: Path, fps: float, max_frames: int, size: int) -> Clip:
    """Frames of a video file at about `fps` frames per second."""
    import av
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError("undecodable", "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            src_fps = float(rate) if rate else None
            kept, times, next_t, dims = [], [], 0.0, None
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / (src_fps or fps)
                if t + 1e-6 < next_t:
                    continue
                while next_t <= t + 1e-6:
                    next_t += 1.0 / fps
                if dims is None:
                    dims = _target_size(frame.width, frame.height, size)
                kept.append(frame.to_ndarray(width=dims[0], height=dims[1], format="rgb24"))
                times.append(t)
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV/FFmpeg raise many error types on bad files
        raise MediaError("undecodable", f"{type(e).__name__}: {e}") from None
    if not kept:
        raise MediaError("undecodable", "no frames decoded")
    pick = _even_spread(len(kept), max_frames)
    duration = (times[-1] - times[0]) + 1.0 / (src_fps or fps)
    return Clip(np.stack([kept[i] for i in pick]), len(pick) / duration, src_fps, duration)


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
