"""Triton M²LA decode attention: one new token per row against a long latent cache (split-K).

Layout (as in `mla_decode.py`): q_latent (B, H, d_c), q_rope (B, H, d_r), c_kv (B, T, d_c),
k_rope (B, T, d_r), lengths (B,) int. The caches may have any strides (e.g. a slice of a larger
preallocated buffer); the queries are made contiguous.

The cache is cut into `num_splits` spans along T. Program (b, split, head block) walks its span
(clipped to lengths[b]) in BLOCK_T steps with an online softmax, loading each latent tile once for
all BLOCK_H heads (the point of the absorbed form: every head reads the same c_kv):

    s   = (q_latent @ c_kv_tile.T + q_rope @ k_rope_tile.T) * scale        (BLOCK_H, BLOCK_T)
    acc = acc * exp(m - m_new) + exp(s - m_new) @ c_kv_tile                  (BLOCK_H, d_c)

and writes its normalised partial output and log-sum-exp. `combine` merges the spans in torch,
weighting each by exp(lse_split - lse_total). Spans past a row's length contribute nothing, and a
row with length 0 gives zeros. Accumulation is fp32; the result has q_latent's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _mla_decode_kernel(ql_ptr, qr_ptr, ckv_ptr, kr_ptr, len_ptr, o_ptr, lse_ptr,
                       H, DC, DR, SPLIT_LEN, N_SPLITS, scale,
                       sc_b, sc_t, sc_c, sr_b, sr_t, sr_r,
                       BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                       BLOCK_R: tl.constexpr, PRECISION: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    heads = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    c = tl.arange(0, BLOCK_C)
    r = tl.arange(0, BLOCK_R)
    h_ok = heads < H
    q_row = (b * H + heads)[:, None]
    ql = tl.load(ql_ptr + q_row * DC + c[None, :], mask=h_ok[:, None] & (c[None, :] < DC),
                 other=0.0)
    qr = tl.load(qr_ptr + q_row * DR + r[None, :], mask=h_ok[:, None] & (r[None, :] < DR),
                 other=0.0)

    length = tl.load(len_ptr + b)
    begin = split * SPLIT_LEN
    stop = tl.minimum(begin + SPLIT_LEN, length)
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_C], dtype=tl.float32)
    for t0 in range(begin, stop, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        t_ok = t < stop
        kv = tl.load(ckv_ptr + b * sc_b + t[:, None] * sc_t + c[None, :] * sc_c,
                     mask=t_ok[:, None] & (c[None, :] < DC), other=0.0)
        kr = tl.load(kr_ptr + b * sr_b + t[:, None] * sr_t + r[None, :] * sr_r,
                     mask=t_ok[:, None] & (r[None, :] < DR), other=0.0)
        s = tl.dot(ql, tl.trans(kv), input_precision=PRECISION)
        s += tl.dot(qr, tl.trans(kr), input_precision=PRECISION)
        s = tl.where(t_ok[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))  # finite: every step holds a valid position
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(kv.dtype), kv, input_precision=PRECISION)
        m = m_new

    seen = l > 0.0
    out = acc / tl.where(seen, l, 1.0)[:, None]
    lse = tl.where(seen, m + tl.log(tl.where(seen, l, 1.0)), float("-inf"))
    part = (b * N_SPLITS + split) * H + heads
    tl.store(o_ptr + part[:, None] * DC + c[None, :], out,
             mask=h_ok[:, None] & (c[None, :] < DC))
    tl.store(lse_ptr + part, lse, mask=h_ok)


def combine(out_parts: torch.Tensor, lse_parts: torch.Tensor) -> torch.Tensor:
    """Merge split partials (B, S, H, d_c) and (B, S, H) into (B, H, d_c); all -inf -> zeros."""
    lse_max = lse_parts.amax(1, keepdim=True)
    weights = torch.exp(lse_parts - lse_max.clamp(min=torch.finfo(torch.float32).min))
    weights = torch.where(torch.isfinite(lse_parts), weights, 0.0)
    total = weights.sum(1)
    out = (weights[..., None] * out_parts).sum(1)
    return out / torch.where(total > 0, total, 1.0)[..., None]


def _default_splits(B: int, H: int, T: int, block_h: int, device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    programs_wanted = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    per_row = max(1, programs_wanted // (B * triton.cdiv(H, block_h)))
    return max(1, min(per_row, triton.cdiv(T, 256)))  # at least 256 positions per span


def mla_decode_triton(q_latent, q_rope, c_kv, k_rope, lengths, scale: float,
                      num_splits: int | None = None) -> torch.Tensor:
    B, H, DC = q_latent.shape
    T, DR = c_kv.shape[1], q_rope.shape[-1]
    if k_rope.dtype != c_kv.dtype:
        raise ValueError(f"mla_decode: c_kv ({c_kv.dtype}) and k_rope ({k_rope.dtype}) caches "
                         "must share a dtype")
    ql = q_latent.to(c_kv.dtype).contiguous()  # tl.dot takes operands of one dtype
    qr = q_rope.to(c_kv.dtype).contiguous()
    lengths = lengths.to(device=c_kv.device, dtype=torch.int32).clamp(0, T).contiguous()
    block_c = max(16, triton.next_power_of_2(DC))
    # heads per program: more share each latent tile, but the (heads, d_c) fp32 accumulator
    # must stay in registers, so fewer when d_c is wide
    block_h = max(16, min(triton.next_power_of_2(H), 8192 // block_c))
    block_t = 32 if block_c >= 256 else 64 if c_kv.is_cuda else 16
    splits = num_splits or _default_splits(B, H, T, block_h, c_kv.device)
    split_len = triton.cdiv(triton.cdiv(max(T, 1), splits), block_t) * block_t
    splits = triton.cdiv(max(T, 1), split_len)
    out_parts = torch.empty(B, splits, H, DC, dtype=torch.float32, device=c_kv.device)
    lse_parts = torch.empty(B, splits, H, dtype=torch.float32, device=c_kv.device)
    if B and H:
        precision = "ieee" if c_kv.dtype == torch.float32 else "tf32"
        grid = (B, splits, triton.cdiv(H, block_h))
        _mla_decode_kernel[grid](ql, qr, c_kv, k_rope, lengths, out_parts, lse_parts,
                                 H, DC, DR, split_len, splits, float(scale),
                                 *c_kv.stride(), *k_rope.stride(),
                                 BLOCK_H=block_h, BLOCK_T=block_t, BLOCK_C=block_c,
                                 BLOCK_R=max(16, triton.next_power_of_2(DR)), PRECISION=precision,
                                 num_warps=8 if block_c >= 256 else 4)
    out = out_parts[:, 0] if splits == 1 else combine(out_parts, lse_parts)
    return out.to(q_latent.dtype)
