"""Rotary position embedding, rotate-half layout (the Qwen/Llama convention).

`x` is (B, S, H, D); `cos` and `sin` are (B, S, D // 2): one angle per frequency pair, already
built from text positions or from multimodal (t, h, w) sections by `framelab.models.rope`.
Pair i couples channel i with channel i + D/2.
"""
from __future__ import annotations

import torch


def apply_rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    c, s = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    return out.to(x.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return apply_rotary_reference(x, cos, sin)
