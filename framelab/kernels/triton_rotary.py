"""Triton rotary embedding, rotate-half layout.

Layout: `x` is (B, S, H, D) with any strides; `cos` and `sin` are (B, S, D // 2) with any strides
(stride 0 along B when one table serves the whole batch). Pair j couples channels j and j + D/2:

    out[..., j]         = x[..., j] * cos[j] - x[..., j + D/2] * sin[j]
    out[..., j + D/2]   = x[..., j + D/2] * cos[j] + x[..., j] * sin[j]

The angles are arbitrary per (batch, position), so text positions, multimodal (t, h, w) sections
and M²LA's decoupled key (H = 1) all take the same kernel. The backward is the same rotation by
the negative angle (SIGN = -1). The output is contiguous (B, S, H, D) in x's dtype; math is fp32.
One program handles one (b, s) position and a block of BLOCK_H heads.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotary_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, S, H, HALF,
                   sxb, sxs, sxh, sxd, scb, scs, scd, ssb, sss, ssd,
                   SIGN: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // S
    s = pid % S
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    j = tl.arange(0, BLOCK_HALF)
    c = tl.load(cos_ptr + b * scb + s * scs + j * scd, mask=j < HALF, other=0.0).to(tl.float32)
    sn = tl.load(sin_ptr + b * ssb + s * sss + j * ssd, mask=j < HALF, other=0.0).to(tl.float32)
    sn = sn * SIGN
    mask = (heads[:, None] < H) & (j[None, :] < HALF)
    src = x_ptr + b * sxb + s * sxs + heads[:, None] * sxh + j[None, :] * sxd
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF * sxd, mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * c[None, :] - x2 * sn[None, :]
    o2 = x2 * c[None, :] + x1 * sn[None, :]
    dst = out_ptr + (pid * H + heads[:, None]) * (2 * HALF) + j[None, :]
    tl.store(dst, o1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, o2.to(out_ptr.dtype.element_ty), mask=mask)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: int) -> torch.Tensor:
    """Rotate x (B, S, H, D) by the angles (sign = +1) or their negatives (sign = -1)."""
    B, S, H, D = x.shape
    half = D // 2
    cos = cos.expand(B, S, half)
    sin = sin.expand(B, S, half)
    out = torch.empty((B, S, H, D), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_h = min(triton.next_power_of_2(H), max(1, 4096 // triton.next_power_of_2(half)))
    grid = (B * S, triton.cdiv(H, block_h))
    _rotary_kernel[grid](x, cos, sin, out, S, H, half, *x.stride(), *cos.stride(), *sin.stride(),
                         SIGN=sign, BLOCK_H=block_h, BLOCK_HALF=triton.next_power_of_2(half))
    return out


class RotaryFunction(torch.autograd.Function):
    """(x (B,S,H,D), cos, sin (B,S,D/2)) -> rotated x. The angles get no gradient."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return rotate(x, cos, sin, 1)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return rotate(dy, cos, sin, -1), None, None
