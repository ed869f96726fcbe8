"""RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight, alone or fused with the residual add before it.

    y = rms_norm(x, weight, eps)                       # one tensor
    y, s = add_rms_norm(x, residual, weight, eps)      # s = x + residual, y = rms_norm(s)

Layout: `x` (and `residual`) are (..., D), `weight` is (D,). One Triton kernel (`triton_rmsnorm`)
serves both; `framelab.kernels.backends` picks it or this reference.
"""
from __future__ import annotations

import torch

from framelab.kernels.backends import use_triton


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Plain torch RMSNorm, computed in fp32 and cast back to the input dtype (Qwen3 convention)."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm of `x`."""
    if use_triton("rms_norm", x, weight):
        from framelab.kernels.triton_rmsnorm import RMSNormFunction
        return RMSNormFunction.apply(x, weight, None, eps)
    return rms_norm_reference(x, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) in one pass; both outputs carry gradients."""
    if use_triton("add_rms_norm", x, weight, residual):
        from framelab.kernels.triton_rmsnorm import RMSNormFunction
        return RMSNormFunction.apply(x, weight, residual, eps)
    summed = x + residual
    return rms_norm_reference(summed, weight, eps), summed
