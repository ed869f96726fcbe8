"""Vision encoder over video frames, and the projector into the LM width.

A video (T, 3, H, W) of pixels in [0, 1] (normalised per channel here, `pixel_mean` / `pixel_std`)
is cut into tubelets of temporal_patch × patch_size × patch_size pixels, embedded by one linear
map (a Conv3d whose stride equals its kernel; `stem="linear"`, as ViT and Qwen-VL) or by two 3 × 3
convolutions over each tubelet's pixels and then a linear map (`stem="conv"`: early convolutions,
which let a small tower learn shapes several times faster), encoded by pre-norm transformer blocks with 2D
rotary (h, w) positions, and merged `merge` × `merge` spatially by the projector (concatenate
neighbours -> MLP -> LM width).
A single image is a video of one frame, repeated to fill the temporal patch.

Token order of one video, after merging: (t, h, w) row-major over the merged grid
(T / temporal_patch, H / patch / merge, W / patch / merge). `MultimodalLM` relies on it.
With `attn_scope="frame"` tokens attend within their time step (cost linear in frames); with
"video" across the whole video. Several videos are encoded as one packed row (cu_seqlens).
"""
from __future__ import annotations

import torch
from torch import nn

from framelab.kernels import AttentionSpec
from framelab.models.config import VisionConfig
from framelab.models.layers import RMSNorm
from framelab.models.rope import RotaryEmbedding
from framelab.models.transformer import Block


def merged_grid(frames: int, height: int, width: int, cfg: VisionConfig) -> tuple[int, int, int]:
    """(t, h, w) of the merged token grid of a video; raises if the shape does not tile."""
    step = cfg.patch_size * cfg.merge
    if height % step or width % step:
        raise ValueError(f"frame size {height}x{width} must be a multiple of patch_size × merge "
                         f"= {step}")
    t = -(-frames // cfg.temporal_patch)
    return t, height // step, width // step


def video_token_count(frames: int, height: int, width: int, cfg: VisionConfig) -> int:
    t, h, w = merged_grid(frames, height, width, cfg)
    return t * h * w


class ConvStem(nn.Module):
    """Tubelet pixels (N, C * temporal_patch * p * p) -> (N, width) through two 3 × 3 convolutions
    (the second with stride 2) over the p × p patch, frames stacked as channels."""

    def __init__(self, cfg: VisionConfig, channels: int = 32):
        super().__init__()
        self.cin, self.p = cfg.channels * cfg.temporal_patch, cfg.patch_size
        self.conv1 = nn.Conv2d(self.cin, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.act = nn.GELU()
        self.proj = nn.Linear(channels * (-(-self.p // 2)) ** 2, cfg.width)

    @property
    def weight(self) -> torch.Tensor:  # its dtype is the tower's input dtype
        return self.proj.weight

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.reshape(-1, self.cin, self.p, self.p)
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.proj(x.flatten(1)).reshape(*patches.shape[:-1], -1)


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        head_dim = cfg.width // cfg.heads
        patch_dim = cfg.channels * cfg.temporal_patch * cfg.patch_size ** 2
        self.patch_embed = nn.Linear(patch_dim, cfg.width) if cfg.stem == "linear" else ConvStem(cfg)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.heads, head_dim, int(cfg.width * cfg.mlp_ratio),
                  cfg.norm_eps, qk_norm=False) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width, cfg.norm_eps)
        # (C, 1, 1) for per-channel normalisation; not saved: the config is the source of truth
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(-1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(-1, 1, 1),
                             persistent=False)
        self.rotary = RotaryEmbedding(head_dim, cfg.rope_theta, (head_dim // 4, head_dim // 4))
        # 2D rotary as in Qwen2-VL's vision tower: h and w each get the *full* frequency range
        # (the plain contiguous split would give w only the lowest frequencies, under 0.01 rad
        # per patch at head_dim 32 -- the encoder could not tell columns apart)
        quarter = head_dim // 4
        per_axis = 1.0 / (cfg.rope_theta ** (torch.arange(quarter, dtype=torch.float32) / quarter))
        self.rotary.inv_freq.copy_(torch.cat([per_axis, per_axis]))

    def _tubelets(self, video: torch.Tensor):
        """(T, C, H, W) -> patches (N, patch_dim) in merged order, (h, w) positions, tokens/step."""
        cfg, p, m, tp = self.cfg, self.cfg.patch_size, self.cfg.merge, self.cfg.temporal_patch
        frames, c, height, width = video.shape
        t, hm, wm = merged_grid(frames, height, width, cfg)
        # per-channel normalisation (VisionConfig.pixel_mean / pixel_std). Raw [0, 1] input, or
        # any normalisation that leaves a uniform background far from zero, gives every token a
        # large shared component, and the LM learns to ignore the nearly identical vision tokens
        video = (video - self.pixel_mean.to(video.dtype)) / self.pixel_std.to(video.dtype)
        if frames % tp:  # pad time by repeating the last frame
            video = torch.cat([video, video[-1:].expand(tp - frames % tp, -1, -1, -1)])
        x = video.reshape(t, tp, c, hm, m, p, wm, m, p)
        # -> (t, hm, wm, mh, mw | c, tp, p, p): merge groups are consecutive tokens
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(t * hm * wm * m * m, -1)
        hh = torch.arange(hm, device=video.device)[:, None, None, None] * m + torch.arange(
            m, device=video.device)[None, None, :, None]
        ww = torch.arange(wm, device=video.device)[None, :, None, None] * m + torch.arange(
            m, device=video.device)[None, None, None, :]
        hh, ww = torch.broadcast_tensors(hh, ww)
        pos = torch.stack([hh.reshape(-1), ww.reshape(-1)]).repeat(1, t)
        return x, pos, hm * wm * m * m, t

    def forward(self, videos: list[torch.Tensor]) -> list[torch.Tensor]:
        """Encode videos; returns per video (tokens, width) in merged order (before merging)."""
        patches, positions, lengths = [], [], []
        for video in videos:
            x, pos, per_step, steps = self._tubelets(video)
            patches.append(x)
            positions.append(pos)
            lengths += [per_step] * steps if self.cfg.attn_scope == "frame" else [per_step * steps]
        dtype = self.patch_embed.weight.dtype
        x = self.patch_embed(torch.cat(patches).to(dtype)).unsqueeze(0)
        pos = torch.cat(positions, dim=1).unsqueeze(1)  # (2, 1, N)
        cos, sin = self.rotary(pos)
        cu = torch.tensor([0] + lengths, device=x.device).cumsum(0).to(torch.int32)
        spec = AttentionSpec(causal=False, cu_seqlens=cu, max_seqlen=max(lengths))
        for block in self.blocks:
            x = block(x, cos, sin, spec)
        x = self.norm(x)[0]
        return list(x.split([p.shape[0] for p in patches]))


class Projector(nn.Module):
    """Concatenate each merge × merge group of vision tokens and map it into the LM width."""

    def __init__(self, cfg: VisionConfig, lm_hidden: int):
        super().__init__()
        self.group = cfg.merge ** 2
        merged = cfg.width * self.group
        self.fc1 = nn.Linear(merged, merged)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(merged, lm_hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.reshape(-1, tokens.shape[-1] * self.group)
        return self.fc2(self.act(self.fc1(x)))
