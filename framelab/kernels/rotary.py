"""Rotary position embedding, rotate-half layout (the Qwen/Llama convention).

`x` is (B, S, H, D); `cos` and `sin` are (B, S, D // 2) (or broadcastable to it, e.g. (1, S, D//2)):
one angle per frequency pair, already built from text positions or from multimodal (t, h, w)
sections by `framelab.models.rope`. Pair i couples channel i with channel i + D/2. M²LA's decoupled
rotary key is the same call with H = 1.

The Triton kernel lives in `triton_rotary`; `framelab.kernels.backends` picks it or this reference.
The kernel gives no gradient to the angles, so when `cos` or `sin` require grad the reference runs.
"""
from __future__ import annotations

import torch

from framelab.kernels.backends import use_triton


def apply_rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    c, s = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    return out.to(x.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    angles_need_grad = torch.is_grad_enabled() and (cos.requires_grad or sin.requires_grad)
    if not angles_need_grad and use_triton("apply_rotary", x, cos, sin):
        if x.dim() != 4 or x.shape[-1] % 2 or cos.shape[-1] != x.shape[-1] // 2:
            raise ValueError(f"apply_rotary takes x (B, S, H, D) with even D and cos/sin "
                             f"(B, S, D/2); got x {tuple(x.shape)}, cos {tuple(cos.shape)}")
        from framelab.kernels.triton_rotary import RotaryFunction
        return RotaryFunction.apply(x, cos, sin)
    return apply_rotary_reference(x, cos, sin)
