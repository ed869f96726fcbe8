"""Attention layers of the decoder: grouped-query attention with per-head q/k RMSNorm (Qwen3).

Every layer computes its projections here and hands the attention itself to the one entry point,
`framelab.kernels.attention`, so the backend (flash-attn, SDPA, FlexAttention, eager) is a config
choice and never a model concern.
"""
from __future__ import annotations

import torch
from torch import nn

from framelab.kernels import AttentionSpec, apply_rotary, attention
from framelab.models.cache import KVCache
from framelab.models.layers import RMSNorm


class GroupedQueryAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int,
                 qk_norm: bool = True, eps: float = 1e-6, bias: bool = False):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(head_dim, eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, eps) if qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                spec: AttentionSpec, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        out = attention(q, k, v, spec)
        return self.o_proj(out.reshape(b, s, -1))
