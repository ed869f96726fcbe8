"""Qwen3-VL's vision inputs from images or video frames, equal to transformers' processors.

`image_inputs` matches `Qwen2VLImageProcessor` (the image processor Qwen3-VL checkpoints name) and
`video_inputs` matches `Qwen3VLVideoProcessor`, both on CPU with the torchvision backend: the same
`pixel_values` (N, C * temporal_patch * patch * patch) and `grid_thw` (t, h, w) in patch units,
so the result can be passed as `pixel_values` / `image_grid_thw` or `pixel_values_videos` /
`video_grid_thw` to a loaded Qwen3-VL (`framelab.models.load_hf`). The steps, each a function:

- `sample_indices` / `frame_timestamps`: the video processor's frame choice (by fps, or a given
  number of frames, `np.linspace` rounded) and the per-temporal-step times the processor writes
  into the prompt (`Qwen3VLProcessor._calculate_timestamps`);
- `image_size` / `video_size`: `smart_resize` of each processor (sides multiples of
  patch x merge = 32, pixel count within [min_pixels, max_pixels]; the video one counts frames and
  upscales sides shorter than 32 first);
- `resize`: bicubic with antialiasing, in uint8 for uint8 frames (rounded, as torchvision does);
- `patchify`: rescale by 1/255 and normalise with the mean/std (fused as the processors do), pad
  time by repeating the last frame to a multiple of temporal_patch, flatten each patch as
  (channel, time, row, column), patches in 2x2 merge-window order.

Frames are uint8 (T, H, W, C) or (H, W, C), or float in [0, 1] (then like the processors called
with `do_rescale=False`). Bad input raises one `UserError` line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from framelab.errors import UserError


@dataclass(frozen=True)
class VisionPreprocess:
    """The processor settings that decide the pixels: the keys of a checkpoint's
    preprocessor_config.json / video_preprocessor_config.json (`from_hf`)."""
    min_pixels: int
    max_pixels: int
    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    # video only (Qwen3VLVideoProcessor): frame sampling and the optional per-frame pixel cap
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    cap_pixels_per_frame: bool = False
    max_video_tokens: int = 768

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @classmethod
    def from_hf(cls, cfg: dict) -> "VisionPreprocess":
        """From a processor config dict (`size` {shortest_edge, longest_edge} or min/max_pixels)."""
        size = dict(cfg.get("size") or {})
        lo = cfg.get("min_pixels", size.get("shortest_edge"))
        hi = cfg.get("max_pixels", size.get("longest_edge"))
        if lo is None or hi is None:
            raise UserError("processor config needs size.shortest_edge and size.longest_edge "
                            "(or min_pixels and max_pixels)")
        keys = ("patch_size", "temporal_patch_size", "merge_size", "rescale_factor", "fps",
                "min_frames", "max_frames", "cap_pixels_per_frame", "max_video_tokens")
        extra = {k: cfg[k] for k in keys if cfg.get(k) is not None}
        for k in ("image_mean", "image_std"):
            if cfg.get(k) is not None:
                extra[k] = tuple(float(v) for v in cfg[k])
        return cls(min_pixels=int(lo), max_pixels=int(hi), **extra)


# The released Qwen3-VL Instruct checkpoints' processor files (preprocessor_config.json,
# video_preprocessor_config.json); read your directory's with `VisionPreprocess.from_hf`.
QWEN3_VL_IMAGE = VisionPreprocess(min_pixels=65536, max_pixels=16777216)
QWEN3_VL_VIDEO = VisionPreprocess(min_pixels=4096, max_pixels=25165824)


def sample_indices(total: int, cfg: VisionPreprocess, video_fps: float | None = None,
                   num_frames: int | None = None) -> list[int]:
    """Frame indices `Qwen3VLVideoProcessor.sample_frames` keeps of a `total`-frame video: with
    `num_frames`, that many evenly spaced; otherwise int(total / video_fps * cfg.fps) clamped to
    [min_frames, max_frames] and to `total` (an unknown `video_fps` counts as 24, as there)."""
    if total < 1:
        raise UserError(f"a video needs at least one frame, got {total}")
    if num_frames is None:
        src = 24.0 if video_fps is None else float(video_fps)
        num_frames = int(total / src * cfg.fps)
        num_frames = min(max(num_frames, cfg.min_frames), cfg.max_frames, total)
    if num_frames < 1:
        raise UserError(f"num_frames must be >= 1, got {num_frames}")
    return np.linspace(0, total - 1, num_frames).round().astype(int).tolist()


def frame_timestamps(indices: list[int], video_fps: float | None, temporal_patch: int = 2) -> list[float]:
    """Seconds of each temporal step, as `Qwen3VLProcessor` renders them (`<t seconds>`): the mean
    time of the step's first and last sampled frame, the last frame repeated to fill the last step
    (an unknown fps counts as 24)."""
    fps = 24.0 if video_fps is None else float(video_fps)
    idx = list(indices)
    if len(idx) % temporal_patch:
        idx += [idx[-1]] * (temporal_patch - len(idx) % temporal_patch)
    t = [i / fps for i in idx]
    return [(t[i] + t[i + temporal_patch - 1]) / 2 for i in range(0, len(t), temporal_patch)]


def _check_ratio(height: int, width: int) -> None:
    if max(height, width) / min(height, width) > 200:
        raise UserError(f"a {height}x{width} frame: Qwen3-VL needs an aspect ratio below 200")


def image_size(height: int, width: int, cfg: VisionPreprocess) -> tuple[int, int]:
    """(height, width) an image is resized to: `Qwen2VLImageProcessor`'s `smart_resize`."""
    _check_ratio(height, width)
    f = cfg.factor
    h, w = round(height / f) * f, round(width / f) * f
    if h * w > cfg.max_pixels:
        beta = math.sqrt(height * width / cfg.max_pixels)
        h, w = max(f, math.floor(height / beta / f) * f), max(f, math.floor(width / beta / f) * f)
    elif h * w < cfg.min_pixels:
        beta = math.sqrt(cfg.min_pixels / (height * width))
        h, w = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
    return h, w


def video_size(frames: int, height: int, width: int, cfg: VisionPreprocess) -> tuple[int, int]:
    """(height, width) a video of `frames` sampled frames is resized to: `Qwen3VLVideoProcessor`'s
    `smart_resize` (pixel budget over all frames), with its per-frame cap when configured."""
    tp, f = cfg.temporal_patch_size, cfg.factor
    if frames < tp:
        raise UserError(f"a Qwen3-VL video needs at least {tp} frames after sampling, got {frames} "
                        "(give a single frame as an image)")
    max_pixels = cfg.max_pixels
    if cfg.cap_pixels_per_frame:
        per_frame = max(min(cfg.max_video_tokens * f * f, cfg.max_pixels // frames),
                        int(cfg.min_pixels * 1.05))
        max_pixels = per_frame * frames
    if height < f or width < f:
        scale = max(f / height, f / width)
        height, width = int(height * scale), int(width * scale)
    _check_ratio(height, width)
    h, w = round(height / f) * f, round(width / f) * f
    t = round(frames / tp) * tp
    if t * h * w > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h, w = max(f, math.floor(height / beta / f) * f), max(f, math.floor(width / beta / f) * f)
    elif t * h * w < cfg.min_pixels:
        beta = math.sqrt(cfg.min_pixels / (frames * height * width))
        h, w = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
    return h, w


def as_frames(frames, what: str = "frames") -> torch.Tensor:
    """uint8 or float (T, H, W, C) / (H, W, C) array or tensor -> (T, C, H, W) tensor, uint8 kept,
    float as float32 (values in [0, 1])."""
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if not isinstance(x, torch.Tensor):
        raise UserError(f"{what} must be a numpy array or torch tensor, got {type(frames).__name__}")
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[-1] != 3:
        raise UserError(f"{what} must be (T, H, W, 3) or (H, W, 3), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise UserError(f"{what} are empty: shape {tuple(x.shape)}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise UserError(f"{what} must be uint8 or float in [0, 1], got {x.dtype}")
    if x.is_floating_point():
        x = x.float()
    return x.permute(0, 3, 1, 2).contiguous()


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(T, C, H, W) -> (T, C, height, width): bicubic, antialiased, as torchvision's `resize` does
    it (uint8 natively on CPU; elsewhere in float, clamped and rounded back to uint8)."""
    if tuple(x.shape[-2:]) == (height, width):
        return x
    if x.dtype == torch.uint8 and x.device.type != "cpu":
        y = F.interpolate(x.float(), size=(height, width), mode="bicubic", align_corners=False,
                          antialias=True)
        return y.clamp_(0, 255).round_().to(torch.uint8)
    return F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)


def normalise(x: torch.Tensor, cfg: VisionPreprocess) -> torch.Tensor:
    """Rescale (uint8 only) and normalise, float32; for uint8, (x - 255 mean) / (255 std) in one
    step, as the processors fuse it."""
    mean = torch.tensor(cfg.image_mean, device=x.device)
    std = torch.tensor(cfg.image_std, device=x.device)
    if x.dtype == torch.uint8:
        mean, std = mean * (1.0 / cfg.rescale_factor), std * (1.0 / cfg.rescale_factor)
    return (x.float() - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)


def patchify(x: torch.Tensor, cfg: VisionPreprocess) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Normalised (T, C, H, W), H and W multiples of patch x merge -> (patches (N, C*tp*p*p),
    grid (t, h, w)): time padded with the last frame, merge windows' patches consecutive."""
    tp, p, m = cfg.temporal_patch_size, cfg.patch_size, cfg.merge_size
    if x.shape[0] % tp:
        x = torch.cat([x, x[-1:].expand(tp - x.shape[0] % tp, -1, -1, -1)])
    frames, c, height, width = x.shape
    t, gh, gw = frames // tp, height // p, width // p
    x = x.reshape(t, tp, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, h/m, w/m, m, m | c, tp, p, p)
    return x.reshape(t * gh * gw, c * tp * p * p), (t, gh, gw)


def image_inputs(images, cfg: VisionPreprocess = QWEN3_VL_IMAGE) -> tuple[torch.Tensor, torch.Tensor]:
    """`pixel_values` (N, C*tp*p*p) and `image_grid_thw` (n, 3) of images as
    `Qwen2VLImageProcessor` gives them: each image (H, W, 3), or each of a stack (n, H, W, 3), or
    a list of images of any sizes, resized by `image_size` and repeated over the temporal patch."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise UserError("no images given")
        items = [im for group in images for im in as_frames(group, "images")]
    else:
        items = list(as_frames(images, "images"))
    pixels, grids = [], []
    for im in items:
        h, w = image_size(im.shape[1], im.shape[2], cfg)
        x = normalise(resize(im[None], h, w), cfg)
        patches, grid = patchify(x.expand(cfg.temporal_patch_size, -1, -1, -1), cfg)
        pixels.append(patches)
        grids.append(grid)
    return torch.cat(pixels), torch.tensor(grids, dtype=torch.long)


def resized_video(frames, cfg: VisionPreprocess = QWEN3_VL_VIDEO) -> torch.Tensor:
    """Already-sampled frames (T, H, W, 3) resized as `Qwen3VLVideoProcessor` resizes them:
    (T, 3, h, w) in the input's dtype (uint8 stays uint8), before normalisation."""
    x = as_frames(frames, "video frames")
    return resize(x, *video_size(x.shape[0], x.shape[2], x.shape[3], cfg))


def video_inputs(frames, cfg: VisionPreprocess = QWEN3_VL_VIDEO, video_fps: float | None = None,
                 num_frames: int | None = None, sample: bool = True):
    """`pixel_values_videos` (N, C*tp*p*p), `video_grid_thw` (1, 3) and the frame indices kept of
    one video (T, H, W, 3), as `Qwen3VLVideoProcessor` gives them: frames sampled by
    `sample_indices` (`video_fps` is the source rate; `num_frames` overrides the rate), or all
    frames with sample=False (the processor's do_sample_frames=False); then resized and
    patchified. `frame_timestamps(indices, video_fps)` gives the prompt's times."""
    x = as_frames(frames, "video frames")
    index = sample_indices(x.shape[0], cfg, video_fps, num_frames) if sample else list(range(x.shape[0]))
    x = x[index]
    x = resize(x, *video_size(x.shape[0], x.shape[2], x.shape[3], cfg))
    patches, grid = patchify(normalise(x, cfg), cfg)
    return patches, torch.tensor([grid], dtype=torch.long), index
