"""Triton RMSNorm, optionally fused with the residual add that precedes it.

Layout: `x` (and `residual`) are (..., D), flattened here to rows (N, D) with unit stride along D
(`.contiguous()` is called); `weight` is (D,). One program normalises one row in fp32:

    s = x (+ residual)          stored in the input dtype when a residual is given
    y = weight * (s * rstd).to(x.dtype),   rstd = 1 / sqrt(mean(s^2) + eps)

which is the reference's rounding (fp32 statistics, cast, then scale by the weight). The backward
uses the saved `rstd` (N,) fp32:

    n = s * rstd,  dn = dy * weight
    ds = rstd * (dn - n * mean(dn * n))  (+ the gradient flowing into the returned sum s)
    dweight = sum over rows of dy * n    (per-program partial sums, reduced in torch)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_fwd_kernel(x_ptr, r_ptr, w_ptr, y_ptr, s_ptr, rstd_ptr, D, eps,
                    HAS_RESIDUAL: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + row * D + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + row * D + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / D + eps)
    tl.store(rstd_ptr + row, rstd)
    normed = (xf * rstd).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * D + cols, (w * normed).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_bwd_kernel(dy_ptr, ds_ptr, s_ptr, w_ptr, rstd_ptr, dx_ptr, dw_part_ptr, N, D,
                    ROWS_PER_PROG, HAS_DS: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    first = pid.to(tl.int64) * ROWS_PER_PROG
    for i in range(0, ROWS_PER_PROG):
        row = first + i
        # the last program may run past the final row; (a vector & scalar mask is mis-typed
        # by the interpreter, so the row test goes into the column bound instead)
        live = cols < tl.where(row < N, D, 0)
        offs = row * D + cols
        dy = tl.load(dy_ptr + offs, mask=live, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + offs, mask=live, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row, mask=row < N, other=0.0)
        n = s * rstd
        dn = dy * w
        ds = rstd * (dn - n * (tl.sum(dn * n, axis=0) / D))
        if HAS_DS:
            ds += tl.load(ds_ptr + offs, mask=live, other=0.0).to(tl.float32)
        tl.store(dx_ptr + offs, ds.to(dx_ptr.dtype.element_ty), mask=live)
        dw += dy * n
    tl.store(dw_part_ptr + pid * D + cols, dw, mask=mask)


def _warps(block_d: int) -> int:
    return 4 if block_d <= 1024 else 8 if block_d <= 4096 else 16


def _programs(n_rows: int, device: torch.device) -> int:
    if device.type == "cuda":
        return min(n_rows, 4 * torch.cuda.get_device_properties(device).multi_processor_count)
    return min(n_rows, 8)


class RMSNormFunction(torch.autograd.Function):
    """(x, weight, residual|None, eps) -> y, or (y, x + residual) when a residual is given."""

    @staticmethod
    def forward(ctx, x, weight, residual, eps):
        shape, D = x.shape, x.shape[-1]
        x2 = x.reshape(-1, D).contiguous()
        has_res = residual is not None
        if has_res:
            s_dtype = torch.result_type(x, residual)
            x2 = x2.to(s_dtype)
            r2 = residual.reshape(-1, D).contiguous()
            s = torch.empty_like(x2)
        else:
            r2, s = x2, x2
        N = x2.shape[0]
        y = torch.empty(x2.shape, dtype=torch.result_type(weight, x2), device=x.device)
        rstd = torch.empty(N, dtype=torch.float32, device=x.device)
        if N:
            block = triton.next_power_of_2(D)
            _rms_fwd_kernel[(N,)](x2, r2, weight.contiguous(), y, s, rstd, D, eps,
                                  HAS_RESIDUAL=has_res, BLOCK_D=block, num_warps=_warps(block))
        ctx.save_for_backward(s, weight, rstd)
        ctx.shape, ctx.has_res = shape, has_res
        ctx.dtypes = (x.dtype, residual.dtype if has_res else None)
        if has_res:
            return y.reshape(shape), s.reshape(shape)
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, dy, ds=None):
        s, weight, rstd = ctx.saved_tensors
        N, D = s.shape
        dy2 = dy.reshape(N, D).contiguous()
        has_ds = ds is not None
        ds2 = ds.reshape(N, D).contiguous() if has_ds else dy2
        dx = torch.empty_like(s)
        progs = max(_programs(N, s.device), 1)
        rows = triton.cdiv(N, progs) if N else 0
        dw_part = torch.zeros(progs, D, dtype=torch.float32, device=s.device)
        if N:
            block = triton.next_power_of_2(D)
            _rms_bwd_kernel[(progs,)](dy2, ds2, s, weight.contiguous(), rstd, dx, dw_part, N, D,
                                      rows, HAS_DS=has_ds, BLOCK_D=block, num_warps=_warps(block))
        dweight = dw_part.sum(0).to(weight.dtype)
        x_dtype, r_dtype = ctx.dtypes
        dx = dx.reshape(ctx.shape)
        dres = dx.to(r_dtype) if ctx.has_res else None
        return dx.to(x_dtype), dweight, dres, None
