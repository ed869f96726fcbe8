"""Vision encoder over video frames, and the projector into the LM width.

A video (T, 3, H, W) of pixels in [0, 1] (normalised per channel here, `pixel_mean` / `pixel_std`)
is cut into tubelets of temporal_patch × patch_size × patch_size pixels, embedded by one linear
map (a Conv3d whose stride equals its kernel; `stem="linear"`, as ViT and Qwen-VL) or by two 3 × 3
convolutions over each tubelet's pixels and then a linear map (`stem="conv"`: early convolutions,
which let a small tower learn shapes faster), or by a small CNN over each whole frame whose
feature map is cut into the patches (`stem="cnn"`, an option), encoded by pre-norm
transformer blocks with 2D rotary (h, w) positions, and merged `merge` × `merge` spatially by the
projector (concatenate neighbours -> MLP -> LM width).
A single image is a video of one frame, repeated to fill the temporal patch.

Token order of one video, after merging: (t, h, w) row-major over the merged grid
(T / temporal_patch, H / patch / merge, W / patch / merge). `MultimodalLM` relies on it.
With `attn_scope="frame"` tokens attend within their time step (cost linear in frames); with
"video" across the whole video. Several videos are encoded as one packed row (cu_seqlens).

`flavour="qwen3_vl"` (see `framelab.models.config`) swaps in Qwen3-VL's parts from
`framelab.models.qwen3_vl`: a biased linear patch embedding, the learned position table added
after it, LayerNorm/GELU-tanh blocks, no final norm (the merger norms instead); the same 2D rotary
and token order. `encode_patches` takes already-cut patches (transformers' `pixel_values` and
`grid_thw`) and also returns the DeepStack layers' outputs.
"""
from __future__ import annotations

import torch
from torch import nn

from framelab.kernels import AttentionSpec
from framelab.models.config import VisionConfig
from framelab.models.layers import RMSNorm
from framelab.models.qwen3_vl import VisionBlock, position_table_taps
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


class CNNStem(nn.Module):
    """A small CNN over each whole tubelet step (frames stacked as channels): a 3 × 3 convolution,
    one of stride 2, then `blocks` residual pairs of 3 × 3 convolutions; each patch's p/2 × p/2
    cell of the feature map is then mapped linearly to its token. Unlike `ConvStem`, whose
    convolutions stop at each patch's border, an object cut by a border is seen whole, and the
    receptive field (about 7 + 8 · blocks pixels) spans the world's objects: with the object
    shape head it lifts the vision stage's shape probe from about 60 to 95 %
    (docs/notes/videollm.md)."""

    def __init__(self, cfg: VisionConfig, channels: int = 32, blocks: int = 2):
        super().__init__()
        self.cin, self.p, self.m = cfg.channels * cfg.temporal_patch, cfg.patch_size, cfg.merge
        if self.p % 2:
            raise ValueError(f"stem=cnn needs an even patch_size, got {self.p}")
        self.conv1 = nn.Conv2d(self.cin, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.res = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.GELU(),
                          nn.Conv2d(channels, channels, 3, padding=1)) for _ in range(blocks))
        self.act = nn.GELU()
        self.proj = nn.Linear(channels * (self.p // 2) ** 2, cfg.width)

    @property
    def weight(self) -> torch.Tensor:  # its dtype is the tower's input dtype
        return self.proj.weight

    def forward(self, patches: torch.Tensor, grids: list[tuple[int, int, int]]) -> torch.Tensor:
        """Patches (N, C * temporal_patch * p * p) in merged order with their grids -> (N, width).
        Consecutive videos of one frame size go through the convolutions as one batch of frames:
        a video's tokens are its frames' in order, so their concatenation is the run's."""
        runs = []   # [(frames, h, w)] of consecutive grids with the same h, w
        for t, h, w in grids:
            if runs and runs[-1][1:] == (h, w):
                runs[-1] = (runs[-1][0] + t, h, w)
            else:
                runs.append((t, h, w))
        return torch.cat([self.frames(x, *grid) for x, grid in
                          zip(patches.split([t * h * w for t, h, w in runs]), runs)])

    def frames(self, x: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
        """The tokens (t h w, width) of t frames of h x w patches, in merged order."""
        p, m, q = self.p, self.m, self.p // 2
        # merged order (t, h/m, w/m, m, m | cin, p, p) -> frames (t, cin, h p, w p)
        x = x.reshape(t, h // m, w // m, m, m, self.cin, p, p)
        x = x.permute(0, 5, 1, 3, 6, 2, 4, 7).reshape(t, self.cin, h * p, w * p)
        x = self.act(self.conv2(self.act(self.conv1(x))))
        for block in self.res:
            x = x + self.act(block(x))
        # (t, C, h q, w q) -> each patch's q x q cell, back in merged order
        x = x.reshape(t, -1, h // m, m, q, w // m, m, q).permute(0, 2, 5, 3, 6, 1, 4, 7)
        return self.proj(x.reshape(t * h * w, -1))


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        head_dim = cfg.width // cfg.heads
        patch_dim = cfg.channels * cfg.temporal_patch * cfg.patch_size ** 2
        self.qwen3_vl = cfg.flavour == "qwen3_vl"
        self.patch_embed = (nn.Linear(patch_dim, cfg.width) if cfg.stem == "linear" else
                            CNNStem(cfg) if cfg.stem == "cnn" else ConvStem(cfg))
        if self.qwen3_vl:
            self.pos_embed = nn.Embedding(cfg.num_position_embeddings, cfg.width)
            self.blocks = nn.ModuleList(VisionBlock(cfg.width, cfg.heads, cfg.mlp_width,
                                                    cfg.norm_eps) for _ in range(cfg.depth))
            self.norm = nn.Identity()
        else:
            self.blocks = nn.ModuleList(
                Block(cfg.width, cfg.heads, cfg.heads, head_dim, cfg.mlp_width, cfg.norm_eps,
                      qk_norm=False) for _ in range(cfg.depth))
            self.norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """(Re)build the non-persistent buffers (pixel statistics, rotary frequencies), e.g. after
        the module was built on the meta device."""
        cfg, head_dim = self.cfg, self.cfg.width // self.cfg.heads
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

    def patchify(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Pixels (T, C, H, W) in [0, 1] -> normalised patches (N, patch_dim) in merged order and
        their grid (t, h, w) in patch units: transformers' `pixel_values` and `grid_thw` layout."""
        x, _, _, t = self._tubelets(video)
        return x, (t, video.shape[2] // self.cfg.patch_size, video.shape[3] // self.cfg.patch_size)

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
        patches, grids = zip(*(self.patchify(v) for v in videos))
        out, _ = self.encode_patches(torch.cat(patches), list(grids))
        return list(out.split([p.shape[0] for p in patches]))

    def encode_patches(self, patches: torch.Tensor, grids: list[tuple[int, int, int]]):
        """Patches (N, patch_dim) of several images/videos, concatenated, with their grids
        (t, h, w) in patch units -> (tokens (N, width) before merging, [tokens after each
        `cfg.deepstack` layer])."""
        cfg, m = self.cfg, self.cfg.merge
        positions, lengths = [], []
        for t, h, w in grids:
            if h % m or w % m:
                raise ValueError(f"a grid of {h}x{w} patches does not tile into {m}x{m} merges")
            hh = torch.arange(h).view(h // m, m)[:, None, :, None]
            ww = torch.arange(w).view(w // m, m)[None, :, None, :]
            hh, ww = torch.broadcast_tensors(hh, ww)
            positions.append(torch.stack([hh.reshape(-1), ww.reshape(-1)]).repeat(1, t))
            lengths += [h * w] * t if cfg.attn_scope == "frame" else [t * h * w]
        if sum(lengths) != patches.shape[0]:
            raise ValueError(f"{patches.shape[0]} patches but the grids {grids} hold "
                             f"{sum(lengths)}")
        dtype = self.patch_embed.weight.dtype
        x = (self.patch_embed(patches.to(dtype), grids) if isinstance(self.patch_embed, CNNStem)
             else self.patch_embed(patches.to(dtype)))
        if self.qwen3_vl:
            side = int(round(cfg.num_position_embeddings ** 0.5))
            idx, wgt = position_table_taps(grids, side, m, x.device)
            x = x + (self.pos_embed(idx) * wgt[..., None].to(x.dtype)).sum(1)
        x = x.unsqueeze(0)
        pos = torch.cat(positions, dim=1).unsqueeze(1).to(x.device)  # (2, 1, N)
        cos, sin = self.rotary(pos)
        cu = torch.tensor([0] + lengths, device=x.device).cumsum(0).to(torch.int32)
        spec = AttentionSpec(causal=False, cu_seqlens=cu, max_seqlen=max(lengths))
        stack = []
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, spec)
            if i in cfg.deepstack:
                stack.append(x[0])
        return self.norm(x)[0], stack


class Projector(nn.Module):
    """Concatenate each merge × merge group of vision tokens and map it into the LM width.

    `norm`: None (framelab), "pre" (LayerNorm of each token before concatenating: Qwen3-VL's
    merger) or "post" (LayerNorm of the concatenation: Qwen3-VL's DeepStack mergers)."""

    def __init__(self, cfg: VisionConfig, lm_hidden: int, norm: str | None = None):
        super().__init__()
        self.group = cfg.merge ** 2
        merged = cfg.width * self.group
        if norm is not None:
            self.norm = nn.LayerNorm(cfg.width if norm == "pre" else merged, eps=cfg.norm_eps)
        self.norm_at = norm
        self.fc1 = nn.Linear(merged, merged)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(merged, lm_hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.norm_at == "pre":
            tokens = self.norm(tokens)
        x = tokens.reshape(-1, tokens.shape[-1] * self.group)
        if self.norm_at == "post":
            x = self.norm(x)
        return self.fc2(self.act(self.fc1(x)))
