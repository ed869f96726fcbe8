"""Attention layers of the decoder: grouped-query attention with per-head q/k RMSNorm (Qwen3) and
M²LA, latent attention with a decoupled rotary key (see MultiHeadLatentAttention).

Every layer computes its projections here and hands the attention itself to the one entry point,
`framelab.kernels.attention`, so the backend (flash-attn, SDPA, FlexAttention, eager) is a config
choice and never a model concern.
"""
from __future__ import annotations

import torch
from torch import nn

from framelab.kernels import AttentionSpec, apply_rotary, attention, mla_decode
from framelab.models.cache import KVCache
from framelab.models.layers import RMSNorm
from framelab.models.rope import pair_axes


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


def default_rope_pairs(head_dim: int, rope_dim: int, sections: tuple[int, ...],
                       interleaved: bool = False) -> torch.Tensor:
    """Frequency pairs a freshly initialised M²LA layer rotates: `rope_dim // 2` of the
    `head_dim // 2` pairs, shared out over the M-RoPE axes (t, h, w) in proportion to the
    number of pairs each owns (at least one each while there are enough), the highest-frequency pairs of each
    axis first, so that every position axis stays visible to attention. Which pairs an axis owns
    follows the rotary layout (`framelab.models.rope.pair_axes`): a contiguous block per axis, or
    Qwen3-VL's interleaved t, h, w, t, h, w, ... (`interleaved`). Returns sorted indices (r,)."""
    r = rope_dim // 2
    axes = pair_axes(head_dim, sections, interleaved)
    owned = [(axes == a).nonzero()[:, 0].tolist() for a in range(len(sections))]
    sizes = [len(p) for p in owned]            # = sections, except where interleaving runs out
    take = [min(n, 1) for n in sizes] if r >= len(sizes) else [0] * len(sizes)
    while sum(take) < r:                       # hand out the rest largest-remainder style
        room = [(n * r / sum(sizes) - t, i) for i, (n, t) in enumerate(zip(sizes, take))
                if t < n]
        take[max(room)[1]] += 1
    while sum(take) > r:
        take[take.index(max(take))] -= 1
    picked = [p for pairs, n in zip(owned, take) for p in pairs[:n]]
    return torch.tensor(sorted(picked), dtype=torch.long)


class MultiHeadLatentAttention(nn.Module):
    """M²LA: multi-head latent attention whose cache keeps every token but compresses its state.

    Per token and layer the cache holds the latent `c_kv` (d_c = kv_lora_rank, no position) and one
    shared rotary key `k_r` (kv_heads × qk_rope_dim), which carries the multimodal (t, h, w) rotary
    positions exactly as the GQA key does. Shapes (G = kv_heads, r = qk_rope_dim // 2 pairs,
    d_n = head_dim − 2r):

        q̂ = q_norm(W_q x) (H, head_dim)   k̂ = k_norm(W_k x) (G, head_dim)   v̂ = W_v x (G·head_dim)
        k_r  = rot(k̂_g[rope dims of g])                      cached, (G·2r)
        c_kv = W_down [k̂_g[nope dims of g] for all g ; v̂]   cached, (d_c)
        k_nope_h = W_uk,h c_kv (d_n)     v_h = W_uv,h c_kv (head_dim)
        score_h  = (q̂_h[nope dims of g(h)] · k_nope_h + rot(q̂_h[rope dims of g(h)]) · k_r,g(h)) / √head_dim

    Which frequency pairs each kv group g rotates is the buffer `rope_pairs` (G, r): a fresh layer
    uses `default_rope_pairs`; `framelab convert mla` writes the pairs it kept (2-norm rule).

    Paper vs our choices: the released M²LA (DeepSeek-style MLA on Qwen3-8B) projects the hidden
    state straight to the latent, has per-head query width nope 128 + rope 128 and ONE 128-wide
    rotary key. We keep Qwen3's per-head q/k RMSNorm *before* compression (the down-projection is
    W_down ∘ [k_norm∘W_k; W_v]) and one rotary slot of 2r dims per kv group inside the shared rotary
    key, because that is what makes a trained GQA checkpoint convert into this layer exactly at full
    rank (a Qwen3 key norm is not linear, so it cannot be folded into a latent projection). With
    kv_heads = 1 the rotary key is literally one shared key, as in the paper.

    Training and prefill use the expanded form (per-head keys and values decompressed from the
    latent, any AttentionSpec). A one-token decode step with a cache uses query absorption: W_uk is
    folded into the query, attention runs against the cached latents (`framelab.kernels.mla_decode`),
    and W_uv is applied to the attended latent — no per-step K/V up-projection.
    """

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, kv_lora_rank: int,
                 qk_rope_dim: int, rope_pairs: torch.Tensor, qk_norm: bool = True,
                 eps: float = 1e-6):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.rope_dim, self.nope_dim, self.kv_lora_rank = qk_rope_dim, head_dim - qk_rope_dim, kv_lora_rank
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, eps) if qk_norm else None
        self.kv_down = nn.Linear(kv_heads * (self.nope_dim + head_dim), kv_lora_rank, bias=False)
        self.k_up = nn.Linear(kv_lora_rank, heads * self.nope_dim, bias=False)
        self.v_up = nn.Linear(kv_lora_rank, heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        pairs = rope_pairs.reshape(-1, qk_rope_dim // 2).expand(kv_heads, -1).clone()
        self.register_buffer("rope_pairs", pairs.long())
        self.register_buffer("head_group", torch.arange(heads) // (heads // kv_heads),
                             persistent=False)

    # ---- index bookkeeping ----------------------------------------------------------------
    def dims(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rope dims (G, 2r), nope dims (G, d_n)): channel indices into a head, rotate-half order
        for the rope part (pair i couples channels i and i + head_dim/2)."""
        half = self.head_dim // 2
        rope = torch.cat([self.rope_pairs, self.rope_pairs + half], dim=1)
        keep = torch.ones(self.kv_heads, self.head_dim, dtype=torch.bool, device=rope.device)
        keep.scatter_(1, rope, False)
        nope = torch.arange(self.head_dim, device=rope.device).expand(self.kv_heads, -1)[keep]
        return rope, nope.view(self.kv_heads, self.nope_dim)

    def _rotate(self, x: torch.Tensor, cos, sin) -> torch.Tensor:
        """Rotate x (B, S, G or H, 2r) with each kv group's own frequency pairs."""
        per_group = x.shape[2] // self.kv_heads
        parts = []
        for g in range(self.kv_heads):
            idx = self.rope_pairs[g]
            parts.append(apply_rotary(x[:, :, g * per_group:(g + 1) * per_group].contiguous(),
                                      cos[..., idx], sin[..., idx]))
        return torch.cat(parts, dim=2)

    # ---- projections ----------------------------------------------------------------------
    def project(self, x: torch.Tensor, cos, sin):
        """(q_nope (B,S,H,d_n), q_rope (B,S,H,2r) rotated, c_kv (B,S,d_c), k_r (B,S,G·2r))."""
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim)
        v = self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        rope, nope = self.dims()
        hg = self.head_group
        q_rope = torch.gather(q, 3, rope[hg].expand(b, s, -1, -1))
        q_nope = torch.gather(q, 3, nope[hg].expand(b, s, -1, -1))
        k_rope = torch.gather(k, 3, rope.expand(b, s, -1, -1))
        k_nope = torch.gather(k, 3, nope.expand(b, s, -1, -1))
        c_kv = self.kv_down(torch.cat([k_nope.reshape(b, s, -1), v], dim=-1))
        k_r = self._rotate(k_rope, cos, sin).reshape(b, s, -1)
        return q_nope, self._rotate(q_rope, cos, sin), c_kv, k_r

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                spec: AttentionSpec, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, s, _ = x.shape
        q_nope, q_rope, c_kv, k_r = self.project(x, cos, sin)
        if cache is not None:
            c_kv, k_r = cache.update(layer, c_kv, k_r)
        if cache is not None and s == 1 and spec.cu_seqlens is None:
            out = self.absorbed(q_nope[:, 0], q_rope[:, 0], c_kv, k_r, spec.mask)[:, None]
        else:
            out = self.expanded(q_nope, q_rope, c_kv, k_r, spec)
        return self.o_proj(out.reshape(b, s, -1))

    def expanded(self, q_nope, q_rope, c_kv, k_r, spec: AttentionSpec) -> torch.Tensor:
        """Decompress per-head keys and values from the latents and attend (any spec)."""
        b, t, _ = c_kv.shape
        k_nope = self.k_up(c_kv).view(b, t, self.heads, self.nope_dim)
        v = self.v_up(c_kv).view(b, t, self.heads, self.head_dim)
        k_rope = k_r.view(b, t, self.kv_heads, self.rope_dim)[:, :, self.head_group]
        q = torch.cat([q_nope, q_rope], dim=-1)
        k = torch.cat([k_nope, k_rope], dim=-1)
        return attention(q, k, v, spec)

    def absorbed(self, q_nope, q_rope, c_kv, k_r, mask: torch.Tensor | None) -> torch.Tensor:
        """One query per row against the cached latents: q_nope (B,H,d_n), q_rope (B,H,2r),
        c_kv (B,T,d_c), k_r (B,T,G·2r); `mask` (broadcastable to (B,H,1,T), True = visible) or
        None. Returns per-head outputs (B, H, head_dim)."""
        b, t, _ = c_kv.shape
        w_uk = self.k_up.weight.view(self.heads, self.nope_dim, self.kv_lora_rank)
        q_latent = torch.einsum("bhn,hnc->bhc", q_nope, w_uk)
        slot = nn.functional.one_hot(self.head_group, self.kv_heads).to(q_rope.dtype)   # (H, G)
        q_rope_wide = torch.einsum("bhr,hg->bhgr", q_rope, slot).reshape(b, self.heads, -1)
        scale = self.head_dim ** -0.5
        if mask is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=c_kv.device)
            latent = mla_decode(q_latent, q_rope_wide, c_kv, k_r, lengths, scale)
        else:
            latent = latent_attention(q_latent, q_rope_wide, c_kv, k_r,
                                      mask[..., -1, :].expand(b, -1, t), scale)
        w_uv = self.v_up.weight.view(self.heads, self.head_dim, self.kv_lora_rank)
        return torch.einsum("bhc,hvc->bhv", latent, w_uv)


def latent_attention(q_latent, q_rope, c_kv, k_r, visible: torch.Tensor, scale: float):
    """The absorbed decode of `mla_decode` with an arbitrary key mask `visible` (B, 1|H, T) —
    left-padded batches in `generate`. Plain torch, fp32 softmax."""
    scores = (torch.einsum("bhc,btc->bht", q_latent.float(), c_kv.float())
              + torch.einsum("bhr,btr->bht", q_rope.float(), k_r.float())) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    return torch.einsum("bht,btc->bhc", probs, c_kv.float()).to(q_latent.dtype)


def make_attention(config) -> nn.Module:
    """The decoder's attention layer for `config.attention` (gqa | mla)."""
    if config.attention == "mla":
        pairs = default_rope_pairs(config.head_dim, config.qk_rope_dim, config.mrope_section,
                                   config.mrope_interleaved)
        return MultiHeadLatentAttention(config.hidden, config.heads, config.kv_heads,
                                        config.head_dim, config.kv_lora_rank, config.qk_rope_dim,
                                        pairs, config.qk_norm, config.norm_eps)
    return GroupedQueryAttention(config.hidden, config.heads, config.kv_heads, config.head_dim,
                                 config.qk_norm, config.norm_eps)
