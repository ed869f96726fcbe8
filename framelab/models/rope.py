"""Rotary angles for 1D text positions and multi-axis positions (video (t, h, w), image (h, w)).

The `head_dim // 2` frequency pairs are split into contiguous sections, one per position axis
(Qwen2-VL's M-RoPE layout): pair i takes its position from the axis whose section contains i.
With `interleaved=True` (Qwen3-VL) the pairs are instead dealt round-robin t, h, w, t, h, w, ...:
pair i belongs to h when i % 3 == 1 and i < 3 * sections[1], to w when i % 3 == 2 and
i < 3 * sections[2], and to t otherwise (transformers' `Qwen3VLTextRotaryEmbedding`).
When every axis carries the same position (text tokens), either layout is exactly 1D rotary.
Returns cos, sin of shape (B, S, head_dim // 2) for `framelab.kernels.apply_rotary`.
"""
from __future__ import annotations

import torch
from torch import nn


def pair_axes(head_dim: int, sections: tuple[int, ...] | None,
              interleaved: bool = False) -> torch.Tensor:
    """(head_dim // 2,) the position axis each frequency pair reads (module docstring): contiguous
    sections, or Qwen3-VL's interleaved layout. Pair i has frequency theta^(-2i / head_dim), so
    within an axis a lower index is a higher frequency."""
    half = head_dim // 2
    sections = tuple(sections) if sections else (half,)
    if sum(sections) != half:
        raise ValueError(f"rotary sections {sections} must sum to head_dim // 2 = {half}")
    if interleaved:
        if len(sections) != 3:
            raise ValueError(f"interleaved rotary needs 3 sections (t, h, w), got {sections}")
        axis = torch.zeros(half, dtype=torch.long)
        for ax in (1, 2):
            axis[ax:3 * sections[ax]:3] = ax
        return axis
    return torch.tensor([i for i, n in enumerate(sections) for _ in range(n)], dtype=torch.long)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float, sections: tuple[int, ...] | None = None,
                 interleaved: bool = False):
        super().__init__()
        half = head_dim // 2
        sections = tuple(sections) if sections else (half,)
        axis = pair_axes(head_dim, sections, interleaved)
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.interleaved = interleaved
        self.sections = sections
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("axis", axis, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: (B, S) shared by every axis, or (n_axes, B, S)."""
        if positions.dim() == 2:
            angles = positions.unsqueeze(-1).float() * self.inv_freq
        else:
            if positions.shape[0] != len(self.sections):
                raise ValueError(f"positions have {positions.shape[0]} axes, rotary sections "
                                 f"{self.sections} need {len(self.sections)}")
            per_pair = positions.permute(1, 2, 0).float()[..., self.axis]  # (B, S, half)
            angles = per_pair * self.inv_freq
        return angles.cos(), angles.sin()
