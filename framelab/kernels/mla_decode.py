"""M²LA decode attention over the latent cache, in the absorbed form (one new token per row).

    out = mla_decode(q_latent, q_rope, c_kv, k_rope, lengths, scale)

Layout:
- q_latent (B, H, d_c): the new token's no-rope query per head, already multiplied through W_uk
  into the latent space (so keys never need decompressing);
- q_rope (B, H, d_r): its decoupled rotary query part;
- c_kv (B, T, d_c): the latent KV cache, shared by all heads; k_rope (B, T, d_r): the one shared
  rotary key per position;
- lengths (B,) int: valid cache length per row (a ragged batch); positions >= length are ignored,
  and a row with length 0 gives zeros;
- scale: the softmax scale (1 / sqrt(d_head_nope + d_r) in M²LA).

Result (B, H, d_c) = softmax((q_latent . c_kv + q_rope . k_rope) * scale) @ c_kv over the valid
positions, in q_latent's dtype; the caller then applies W_uv (absorbed into the output projection).
Forward only: decoding runs without gradients. The Triton split-K kernel lives in
`triton_mla_decode`; `framelab.kernels.backends` picks it or the reference below, which also runs
whenever an input requires grad.
"""
from __future__ import annotations

import torch

from framelab.kernels.backends import use_triton


def mla_decode_reference(q_latent, q_rope, c_kv, k_rope, lengths, scale: float) -> torch.Tensor:
    T = c_kv.shape[1]
    kv = c_kv.float()
    scores = (torch.einsum("bhc,btc->bht", q_latent.float(), kv)
              + torch.einsum("bhr,btr->bht", q_rope.float(), k_rope.float())) * scale
    valid = torch.arange(T, device=c_kv.device)[None, :] < lengths.to(c_kv.device)[:, None]
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    probs = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)  # length 0 -> zeros
    return torch.einsum("bht,btc->bhc", probs, kv).to(q_latent.dtype)


def mla_decode(q_latent, q_rope, c_kv, k_rope, lengths, scale: float) -> torch.Tensor:
    B, H, d_c = q_latent.shape
    if c_kv.shape[0] != B or c_kv.shape[2] != d_c or q_rope.shape[:2] != (B, H) \
            or k_rope.shape[:2] != c_kv.shape[:2] or k_rope.shape[2] != q_rope.shape[2] \
            or lengths.shape != (B,):
        raise ValueError(
            f"mla_decode takes q_latent (B,H,d_c), q_rope (B,H,d_r), c_kv (B,T,d_c), "
            f"k_rope (B,T,d_r), lengths (B,); got {tuple(q_latent.shape)}, {tuple(q_rope.shape)}, "
            f"{tuple(c_kv.shape)}, {tuple(k_rope.shape)}, {tuple(lengths.shape)}")
    tensors = (q_latent, q_rope, c_kv, k_rope)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if not needs_grad and use_triton("mla_decode", *tensors):
        from framelab.kernels.triton_mla_decode import mla_decode_triton
        return mla_decode_triton(q_latent, q_rope, c_kv, k_rope, lengths, scale)
    return mla_decode_reference(q_latent, q_rope, c_kv, k_rope, lengths, scale)
