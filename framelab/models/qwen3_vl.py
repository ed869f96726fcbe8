"""The pieces that make framelab's vision tower and multimodal model be Qwen3-VL
(`VisionConfig.flavour="qwen3_vl"`), each matching transformers' `Qwen3VLForConditionalGeneration`:

- `VisionBlock`: pre-LayerNorm block with a fused, biased qkv projection, 2D rotary attention
  within each frame, and a biased GELU-tanh MLP (`Qwen3VLVisionBlock`);
- `position_table_taps`: the learned square position table resampled bilinearly
  (align_corners=True) to a grid, as gather indices and weights in merged token order
  (`get_vision_interpolation_indices_and_weights`);
- `rope_index`: the LM's 3D rotary positions of a Qwen3-VL prompt (`Qwen3VLModel.get_rope_index`):
  each contiguous run of image or video placeholders is one grid, a video being split into its
  temporal steps (the prompt gives every step its own `<t seconds><|vision_start|>...` run);
  `packed_rope_index` restarts them at every document of a packed row (framelab's packing);
- `frame_timestamps` / `video_prompt`: the timestamps and placeholder text Qwen3-VL's processor
  renders for a video (`Qwen3VLProcessor.replace_video_token`).

The patch embedding (a biased linear map of each tubelet, the Conv3d of stride = kernel
flattened), the 2x2 merger and the DeepStack mergers are framelab's own `Projector` and patch
embedding with Qwen3-VL options; see `framelab.models.vision`.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

from framelab.kernels import AttentionSpec, apply_rotary, attention


class VisionAttention(nn.Module):
    """Full attention within each frame's patches; names match `Qwen3VLVisionAttention`."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, cos, sin, spec: AttentionSpec):
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).unbind(2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return self.proj(attention(q, k, v, spec).reshape(b, s, d))


class VisionMLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.linear_fc1 = nn.Linear(width, hidden)
        self.linear_fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.linear_fc2(F.gelu(self.linear_fc1(x), approximate="tanh"))


class VisionBlock(nn.Module):
    """x + attn(LN(x)), then x + mlp(LN(x)); the same call signature as the decoder's `Block`."""

    def __init__(self, width: int, heads: int, mlp_width: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.attn = VisionAttention(width, heads)
        self.mlp = VisionMLP(width, mlp_width)

    def forward(self, x, cos, sin, spec, cache=None, layer=0):
        x = x + self.attn(self.norm1(x), cos, sin, spec)
        return x + self.mlp(self.norm2(x))


def _axis_taps(index: torch.Tensor, size: int, side: int):
    """Bilinear taps (n, 2) and weights (n, 2) into a `side`-long table for `index` on an axis of
    length `size`, corners aligned (F.interpolate(align_corners=True))."""
    src = index.float() * (side - 1) / max(size - 1, 1)
    low = src.floor()
    frac = src - low
    taps = torch.stack([low.long(), low.long() + 1], -1).clamp(0, side - 1)
    return taps, torch.stack([1 - frac, frac], -1)


def position_table_taps(grids: list[tuple[int, int, int]], side: int, merge: int, device=None):
    """For patch grids (t, h, w) in patch units: gather indices (N, 4) into the flattened
    side x side position table and bilinear weights (N, 4), the N patches in merged token order
    (t, h/merge, w/merge, merge, merge) as the tower sees them."""
    indices, weights = [], []
    for t, h, w in grids:
        hh = torch.arange(h, device=device).view(h // merge, merge)[:, None, :, None]
        ww = torch.arange(w, device=device).view(w // merge, merge)[None, :, None, :]
        hh, ww = torch.broadcast_tensors(hh, ww)          # (h/m, w/m, m, m)
        ht, hw = _axis_taps(hh.reshape(-1), h, side)
        wt, wwt = _axis_taps(ww.reshape(-1), w, side)
        idx = (ht[:, :, None] * side + wt[:, None, :]).reshape(-1, 4)
        wgt = (hw[:, :, None] * wwt[:, None, :]).reshape(-1, 4)
        indices.append(idx.repeat(t, 1))
        weights.append(wgt.repeat(t, 1))
    return torch.cat(indices), torch.cat(weights)


def rope_index(input_ids: torch.Tensor, image_token_id: int | None, video_token_id: int,
               image_grids: list[tuple[int, int, int]], video_grids: list[tuple[int, int, int]],
               merge: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(3, B, S) rotary positions of Qwen3-VL prompts, as `Qwen3VLModel.get_rope_index`.

    Grids are in patch units (t, h, w), in prompt order over the row-major `input_ids`. Text
    advances all axes by one; each contiguous run of image (or video) placeholders takes the next
    image grid (or the next temporal step of the next video, each step a grid (1, h, w)) and puts
    cell (t, y, x) at (p + t, p + y, p + x) for the run's start p; the next text token is at
    p + max(h, w) / merge. Padding (attention_mask 0) is skipped and gets position 0.
    """
    b, s = input_ids.shape
    steps = [(1, h, w) for t, h, w in video_grids for _ in range(t)]
    queues = {1: iter(image_grids), 2: iter(steps)}
    ids = input_ids.cpu()
    kinds = torch.zeros_like(ids)
    if image_token_id is not None:
        kinds[ids == image_token_id] = 1
    kinds[ids == video_token_id] = 2
    out = torch.zeros(3, b, s, dtype=torch.long)
    for row in range(b):
        keep = (attention_mask[row].bool().cpu() if attention_mask is not None
                else torch.ones(s, dtype=torch.bool))
        where = keep.nonzero()[:, 0]
        pos, cur, i = [], 0, 0
        for kind, run in itertools.groupby(kinds[row][keep].tolist()):
            n = len(list(run))
            if kind == 0:
                pos.append(torch.arange(n).expand(3, n) + cur)
                cur += n
            else:
                name = "image" if kind == 1 else "video frame"
                try:
                    t, h, w = next(queues[kind])
                except StopIteration:
                    raise ValueError(f"more {name} placeholder runs in input_ids than "
                                     f"{name}s") from None
                gh, gw = h // merge, w // merge
                if n != t * gh * gw:
                    raise ValueError(f"an {name} placeholder run of {n} tokens at position "
                                     f"{int(where[i])} of row {row}; its grid {t}x{h}x{w} needs "
                                     f"{t * gh * gw} (Qwen3-VL gives every video frame its own "
                                     "run)")
                tt, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(gh), torch.arange(gw),
                                            indexing="ij")
                pos.append(torch.stack([tt.flatten(), yy.flatten(), xx.flatten()]) + cur)
                cur += max(gh, gw)
            i += n
        if pos:
            out[:, row, where] = torch.cat(pos, 1)
    for kind, name in ((1, "images"), (2, "video frames")):
        if next(queues[kind], None) is not None:
            raise ValueError(f"more {name} than placeholder runs in input_ids")
    return out.to(input_ids.device)


def _runs(ids: torch.Tensor, token_id: int | None) -> int:
    """Number of contiguous runs of `token_id` in a 1D id tensor."""
    if token_id is None or ids.numel() == 0:
        return 0
    hit = (ids == token_id).long()
    return int(hit[0]) + int(((hit[1:] - hit[:-1]) == 1).sum())


def packed_rope_index(input_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                      image_token_id: int | None, video_token_id: int,
                      image_grids: list[tuple[int, int, int]],
                      video_grids: list[tuple[int, int, int]], merge: int) -> torch.Tensor:
    """`rope_index` for one packed row (1, S) of documents (cumulative lengths `cu_seqlens`):
    positions restart at every document, each taking the images and videos of its placeholder
    runs in order. A video's frames must all lie in one document."""
    if input_ids.shape[0] != 1:
        raise ValueError("packed documents (cu_seqlens) need a batch of one row")
    out = torch.zeros(3, 1, input_ids.shape[1], dtype=torch.long, device=input_ids.device)
    bounds = cu_seqlens.tolist()
    images, steps_left, videos = list(image_grids), 0, list(video_grids)
    for a, b in zip(bounds[:-1], bounds[1:]):
        doc = input_ids[:, a:b]
        n_img, n_steps = _runs(doc[0].cpu(), image_token_id), _runs(doc[0].cpu(), video_token_id)
        take = []
        while n_steps > 0:
            if not videos:
                raise ValueError("more video frame placeholder runs in input_ids than video frames")
            take.append(videos.pop(0))
            n_steps -= take[-1][0]
        if n_steps < 0:
            raise ValueError(f"a video's frames are split between packed documents (at {b})")
        out[:, :, a:b] = rope_index(doc, image_token_id, video_token_id, images[:n_img], take,
                                    merge)
        images = images[n_img:]
    if images or videos:
        raise ValueError("more images or videos than placeholder runs in input_ids")
    return out


def frame_timestamps(frame_indices: list[int], fps: float, temporal_patch: int = 2) -> list[float]:
    """Seconds of each temporal step of a video sampled at `frame_indices` of a `fps` source: the
    mean time of the step's first and last frame (the last frame repeated to fill the last step)."""
    idx = list(frame_indices)
    if len(idx) % temporal_patch:
        idx += [idx[-1]] * (temporal_patch - len(idx) % temporal_patch)
    return [(idx[i] + idx[i + temporal_patch - 1]) / 2 / fps for i in range(0, len(idx),
                                                                          temporal_patch)]


def video_prompt(timestamps: list[float], tokens_per_frame: int, video_token: str = "<|video_pad|>",
                 start: str = "<|vision_start|>", end: str = "<|vision_end|>") -> str:
    """The text Qwen3-VL's processor puts in place of one video: per temporal step
    `<{t:.1f} seconds>` then the step's placeholder run between the vision start and end tokens."""
    return "".join(f"<{t:.1f} seconds>{start}{video_token * tokens_per_frame}{end}"
                   for t in timestamps)
