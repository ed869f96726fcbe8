"""RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight, optionally fused with a residual add.

Layout: `x` (and `residual`) are (..., D), `weight` is (D,). The Triton kernel lives in
`triton_rmsnorm`; `framelab.kernels.dispatch` picks it or this reference.
"""
from __future__ import annotations

import torch

from framelab.kernels.dispatch import use_triton


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Plain torch RMSNorm, computed in fp32 and cast back to the input dtype (Qwen3 convention)."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
             residual: torch.Tensor | None = None):
    """RMSNorm of `x`; with `residual`, returns (rms_norm(x + residual), x + residual)."""
    tensors = (x, weight) if residual is None else (x, weight, residual)
    if use_triton("rms_norm", *tensors):
        from framelab.kernels.triton_rmsnorm import RMSNormFunction
        return RMSNormFunction.apply(x, weight, residual, eps)
    if residual is not None:
        x = x + residual
        return rms_norm_reference(x, weight, eps), x
    return rms_norm_reference(x, weight, eps)
