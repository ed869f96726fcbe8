"""Triton cross-entropy over one chunk of logits, writing d loss / d logits in place.

Layout: `logits` is (C, V) with unit stride along V, in the matmul's dtype (fp32, or bf16/fp16 on
GPU, read and computed in fp32); `labels` is (C,) int; `scale` is a one-element fp32 tensor
holding 1 / n_valid (a tensor, so no host sync is needed to know it). One program owns one row:

    pass 1: online max / sum-exp over V in blocks of BLOCK_V  -> lse; the target logit;
            with smoothing, the sum of the logits
            loss = lse - z[label]  (smoothed: (1 - eps) * that + eps * (lse - mean z)), 0 if ignored
    pass 2: z <- (exp(z - lse) - eps / V - (1 - eps) * [j == label]) * scale   (0 if ignored)

This is the contract of `_chunk_loss_torch` in `cross_entropy.py`, which drives the chunks.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK_V = 8192  # largest vocabulary block a program holds at once (tests shrink it)


@triton.jit
def _ce_chunk_kernel(logits_ptr, stride_row, labels_ptr, loss_ptr, scale_ptr, V, ignore_index,
                     smoothing, COMPUTE_GRAD: tl.constexpr, HAS_SMOOTHING: tl.constexpr,
                     BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    ptr = logits_ptr + row * stride_row
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    target = tl.where(valid, label, 0)

    m = float("-inf")
    s = 0.0
    z_sum = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        z = tl.load(ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
        if HAS_SMOOTHING:
            z_sum += tl.sum(tl.where(cols < V, z, 0.0), axis=0)
    lse = m + tl.log(s)
    loss = lse - tl.load(ptr + target).to(tl.float32)
    if HAS_SMOOTHING:
        loss = (1.0 - smoothing) * loss + smoothing * (lse - z_sum / V)
    tl.store(loss_ptr + row, tl.where(valid, loss, 0.0))

    if COMPUTE_GRAD:
        scale = tl.where(valid, tl.load(scale_ptr), 0.0)
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            z = tl.load(ptr + cols, mask=cols < V, other=0.0).to(tl.float32)
            g = tl.exp(z - lse)
            if HAS_SMOOTHING:
                g = g - smoothing / V
            g = tl.where(cols == target, g - (1.0 - smoothing), g)
            tl.store(ptr + cols, (g * scale).to(logits_ptr.dtype.element_ty), mask=cols < V)


def chunk_loss_triton(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                      smoothing: float, scale: torch.Tensor, compute_grad: bool) -> torch.Tensor:
    """Summed loss of a (C, V) chunk; overwrites `logits` with d(mean loss)/d logits."""
    C, V = logits.shape
    if logits.stride(1) != 1:
        raise ValueError("chunk_loss_triton needs logits with unit stride along the vocabulary")
    losses = torch.empty(C, dtype=torch.float32, device=logits.device)
    if C == 0:
        return losses.sum()
    block_v = min(triton.next_power_of_2(V), MAX_BLOCK_V)
    num_warps = 4 if block_v <= 2048 else 16
    _ce_chunk_kernel[(C,)](logits, logits.stride(0), labels, losses,
                           scale.reshape(1).to(torch.float32), V, ignore_index, smoothing,
                           COMPUTE_GRAD=compute_grad, HAS_SMOOTHING=smoothing > 0,
                           BLOCK_V=block_v, num_warps=num_warps)
    return losses.sum()
