"""The one attention entry point. Every model calls `attention(q, k, v, spec)`.

Layout: q is (B, Sq, Hq, D), k and v are (B, Sk, Hkv, D) with Hq a multiple of Hkv (grouped-query
attention); v may have its own head width. The result is (B, Sq, Hq, Dv).

`AttentionSpec` says which keys each query may see:
- `causal`: query i sees keys j <= i + (Sk - Sq) (bottom-right aligned, so a decode step with a
  cache of Sk - Sq earlier tokens is causal too);
- `cu_seqlens`: packed documents in one row (B == 1): cumulative lengths (n_docs + 1,) int32;
  queries see only keys of their own document (and, if `causal`, only earlier ones);
- `mask`: an arbitrary boolean block mask, True = may attend, broadcastable to (B, Hq, Sq, Sk),
  combined (AND) with the two above. Used for padding, SAR set masks, sink tokens, cross-attention.

Backends: `flash` (flash-attn on CUDA; varlen for packed documents), `sdpa` (torch), `flex`
(FlexAttention with a mask function) and `eager` (explicit softmax in fp32, the reference). Which
one runs is chosen in `framelab.kernels.backends` (runtime.attn_backend, `auto` by default); a
call's own `backend=` overrides it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from framelab.kernels.backends import pick_attention


@dataclass
class AttentionSpec:
    causal: bool = True
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int | None = None
    mask: torch.Tensor | None = None

    @property
    def kind(self) -> str:
        if self.mask is not None:
            return "block"
        if self.cu_seqlens is not None:
            return "packed"
        return "causal" if self.causal else "full"


def attention(q, k, v, spec: AttentionSpec | None = None, scale: float | None = None,
              backend: str | None = None) -> torch.Tensor:
    spec = spec or AttentionSpec()
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key heads ({k.shape[2]})")
    if spec.cu_seqlens is not None and q.shape[0] != 1:
        raise ValueError("packed documents (cu_seqlens) need a batch of one row")
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    name = pick_attention(q, spec, backend)
    if name == "flash":
        return _flash(q, k, v, spec, scale)
    if name == "flex":
        return _flex(q, k, v, spec, scale)
    if name == "eager":
        return _eager(q, k, v, spec, scale)
    return _sdpa(q, k, v, spec, scale)


# ---- masks ---------------------------------------------------------------------------------

def document_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Document index of each position of a packed row, from cumulative lengths."""
    pos = torch.arange(total, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].to(pos.dtype), pos, right=True)


def dense_mask(spec: AttentionSpec, sq: int, sk: int, device) -> torch.Tensor | None:
    """The spec as one boolean mask broadcastable to (B, H, Sq, Sk), or None when all may attend."""
    mask = None
    if spec.causal:
        qi = torch.arange(sq, device=device).unsqueeze(1) + (sk - sq)
        mask = qi >= torch.arange(sk, device=device).unsqueeze(0)
    if spec.cu_seqlens is not None:
        doc_q = document_ids(spec.cu_seqlens, sk)[sk - sq:]
        doc_k = document_ids(spec.cu_seqlens, sk)
        same = doc_q.unsqueeze(1) == doc_k.unsqueeze(0)
        mask = same if mask is None else mask & same
    if mask is not None:
        mask = mask[None, None]
    if spec.mask is not None:
        m = spec.mask.to(device=device, dtype=torch.bool)
        mask = m if mask is None else mask & m
    return mask


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=2)


# ---- backends ------------------------------------------------------------------------------

def _eager(q, k, v, spec, scale):
    groups = q.shape[2] // k.shape[2]
    qt = q.transpose(1, 2).float()
    kt = _repeat_kv(k, groups).transpose(1, 2).float()
    vt = _repeat_kv(v, groups).transpose(1, 2).float()
    scores = qt @ kt.transpose(-1, -2) * scale
    mask = dense_mask(spec, q.shape[1], k.shape[1], q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # a row that may see nothing yields zeros
    return (probs @ vt).transpose(1, 2).to(q.dtype)


def _sdpa(q, k, v, spec, scale):
    groups = q.shape[2] // k.shape[2]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    sq, sk = q.shape[1], k.shape[1]
    if spec.mask is None and spec.cu_seqlens is None and (not spec.causal or sq == sk or sq == 1):
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=spec.causal and sq > 1,
                                             scale=scale, enable_gqa=groups > 1)
    else:
        mask = dense_mask(spec, sq, sk, q.device)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale,
                                             enable_gqa=groups > 1)
        if spec.mask is not None:  # rows that may see nothing come back NaN from SDPA
            out = torch.nan_to_num(out, nan=0.0)
    return out.transpose(1, 2)


def _flex(q, k, v, spec, scale):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    groups = q.shape[2] // k.shape[2]
    sq, sk = q.shape[1], k.shape[1]
    offset = sk - sq
    docs = document_ids(spec.cu_seqlens, sk) if spec.cu_seqlens is not None else None
    user = spec.mask.to(q.device, torch.bool) if spec.mask is not None else None
    if user is not None:
        user = user.expand(q.shape[0], q.shape[2], sq, sk)

    def mask_mod(b, h, qi, ki):
        ok = qi >= 0
        if spec.causal:
            ok = ok & (qi + offset >= ki)
        if docs is not None:
            ok = ok & (docs[qi + offset] == docs[ki])
        if user is not None:
            ok = ok & user[b, h, qi, ki]
        return ok

    block = create_block_mask(mask_mod, q.shape[0], q.shape[2], sq, sk, device=q.device)
    out = flex_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                         block_mask=block, scale=scale, enable_gqa=groups > 1)
    return out.transpose(1, 2)


def _flash(q, k, v, spec, scale):
    if spec.mask is not None:
        raise ValueError("flash-attn takes causal and packed masks only; use sdpa or flex for "
                         "block masks (runtime.attn_backend)")
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    if spec.cu_seqlens is None:
        return flash_attn_func(q, k, v, softmax_scale=scale, causal=spec.causal)
    cu = spec.cu_seqlens.to(torch.int32)
    max_len = spec.max_seqlen or int((cu[1:] - cu[:-1]).max())
    out = flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, max_len, max_len,
                                 softmax_scale=scale, causal=spec.causal)
    return out.unsqueeze(0)
