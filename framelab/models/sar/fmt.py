"""The Fully Masked Transformer (FMT) of SAR: an encoder-decoder that generates sets of tokens.

    encoder: [class token, tokens of sets 0..k-1] --(generalised causal mask)--> memory
    decoder: position queries of set k (+ class) --self-attn within set k,
                                                   cross-attn to memory of sets < k--> logits

What the paper says (../shared/papers.md §4): the encoder embeds the tokens generated so far under
a block-causal mask over sets; the decoder's inputs are position-embedding queries for the next
set's positions, which attend to each other and cross-attend to the encoder outputs of preceding
sets; three masks (see `masks`); the encoder's keys/values can be cached. Class-conditional.

What we chose (the paper does not say; each is a config key where it matters):
- Backbone blocks: framelab's pre-norm `Block` (RMSNorm, GQA with q/k norm, SwiGLU) for the
  encoder layers and for the self-attention + MLP part of each decoder layer; a decoder layer is
  [cross-attention sublayer, then Block]. Cross-attention reads the *final* encoder output
  (T5-style), projected to keys/values by each decoder layer.
- Class condition: a class token at the head of the encoder sequence (so the first set has
  something to cross-attend to) and a class embedding added to every decoder query; index
  `num_classes` is the null class of classifier-free guidance.
- Positions: learned absolute embeddings (encoder tokens: token + position embedding; decoder
  queries: position embedding only), plus 2D axial rotary on (row, col) in every attention
  (`rope`, on by default). The class token sits at (row, col) = (-1, -1), outside the grid.
- In training the encoder skips the last set (no query ever reads it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from framelab.errors import UserError
from framelab.kernels import AttentionSpec, apply_rotary, attention
from framelab.models.cache import KVCache
from framelab.models.layers import RMSNorm
from framelab.models.rope import RotaryEmbedding
from framelab.models.sar.masks import (as_spec_mask, decoder_cross_mask, decoder_self_mask,
                                       encoder_mask, with_class)
from framelab.models.sar.partition import Partition
from framelab.models.transformer import Block

CLASS_POSITION = -1


@dataclass
class FMTConfig:
    codebook_size: int = 64
    num_classes: int = 48
    grid: tuple[int, int] = (8, 8)
    hidden: int = 64
    enc_layers: int = 2
    dec_layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    head_dim: int = 16
    intermediate: int = 128
    rope: bool = True
    rope_theta: float = 100.0
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def __post_init__(self):
        self.grid = tuple(int(g) for g in self.grid)
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise UserError(f"FMT grid {self.grid}: expected two positive sizes (h, w)")
        if self.heads % self.kv_heads:
            raise UserError(f"FMT heads ({self.heads}) must be a multiple of kv_heads "
                            f"({self.kv_heads})")
        if self.rope and self.head_dim % 4:
            raise UserError(f"FMT head_dim ({self.head_dim}) must be a multiple of 4 for 2D "
                            "rotary (or set rope: false)")

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @classmethod
    def from_dict(cls, data: dict) -> "FMTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown SAR model keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


class CrossAttention(nn.Module):
    """Queries from the decoder, keys/values from the encoder memory (projected once per token,
    so they can be cached as the memory grows)."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, eps: float):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)

    def memory_kv(self, memory, cos, sin):
        b, s, _ = memory.shape
        k = self.k_norm(self.k_proj(memory).view(b, s, self.kv_heads, self.head_dim))
        v = self.v_proj(memory).view(b, s, self.kv_heads, self.head_dim)
        return apply_rotary(k, cos, sin), v

    def forward(self, x, cos, sin, k, v, spec: AttentionSpec):
        b, s, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, s, self.heads, self.head_dim))
        out = attention(apply_rotary(q, cos, sin), k, v, spec)
        return self.o_proj(out.reshape(b, s, -1))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: FMTConfig):
        super().__init__()
        self.cross_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.cross_attn = CrossAttention(cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim,
                                         cfg.norm_eps)
        self.block = Block(cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.intermediate,
                           cfg.norm_eps)

    def forward(self, x, cos, sin, k, v, cross_spec, self_spec):
        x = x + self.cross_attn(self.cross_norm(x), cos, sin, k, v, cross_spec)
        return self.block(x, cos, sin, self_spec)


class FullyMaskedTransformer(nn.Module):
    def __init__(self, cfg: FMTConfig):
        super().__init__()
        self.cfg = cfg
        n, d = cfg.num_tokens, cfg.hidden
        self.tok_emb = nn.Embedding(cfg.codebook_size, d)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, d)
        self.enc_pos = nn.Embedding(n, d)
        self.dec_pos = nn.Embedding(n, d)
        self.encoder = nn.ModuleList(
            Block(d, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.intermediate, cfg.norm_eps)
            for _ in range(cfg.enc_layers))
        self.enc_norm = RMSNorm(d, cfg.norm_eps)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        self.norm = RMSNorm(d, cfg.norm_eps)
        self.head = nn.Linear(d, cfg.codebook_size, bias=False)
        half = cfg.head_dim // 2
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, (half // 2, half - half // 2))
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    # ---- pieces (shared by training and generation) ------------------------------------------
    def rope(self, positions: torch.Tensor):
        """cos, sin for grid positions (B, S); CLASS_POSITION maps to (row, col) = (-1, -1)."""
        if not self.cfg.rope:
            shape = (*positions.shape, self.cfg.head_dim // 2)
            return (torch.ones(shape, device=positions.device),
                    torch.zeros(shape, device=positions.device))
        w = self.cfg.grid[1]
        is_cls = positions == CLASS_POSITION
        rows = torch.where(is_cls, -1, positions.div(w, rounding_mode="floor"))
        cols = torch.where(is_cls, -1, positions.remainder(w))
        return self.rotary(torch.stack([rows, cols]))

    def class_tokens(self, labels: torch.Tensor):
        """Encoder input and position of the class token: (B, 1, d), (B, 1)."""
        pos = labels.new_full((labels.shape[0], 1), CLASS_POSITION)
        return self.class_emb(labels).unsqueeze(1), pos

    def token_inputs(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.tok_emb(tokens) + self.enc_pos(positions)

    def encode(self, x, positions, spec: AttentionSpec, cache: KVCache | None = None):
        """Encoder over x (B, S, d) at grid `positions` (B, S) -> memory (B, S, d). With a cache,
        x is only the new tokens; they see the cached ones and each other as `spec` says."""
        cos, sin = self.rope(positions)
        for i, block in enumerate(self.encoder):
            x = block(x, cos, sin, spec, cache, i)
        if cache is not None:
            cache.advance(x.shape[1])
        return self.enc_norm(x)

    def memory_kv(self, memory, positions, cache: KVCache | None = None):
        """Each decoder layer's cross-attention keys/values of the memory (all cached ones, too)."""
        cos, sin = self.rope(positions)
        kvs = []
        for i, layer in enumerate(self.decoder):
            k, v = layer.cross_attn.memory_kv(memory, cos, sin)
            kvs.append(cache.update(i, k, v) if cache is not None else (k, v))
        if cache is not None:
            cache.advance(memory.shape[1])
        return kvs

    def decode(self, query_positions, labels, kvs, cross_spec: AttentionSpec,
               self_spec: AttentionSpec) -> torch.Tensor:
        """Hidden states (B, Sq, d) of the queries at `query_positions` (B, Sq)."""
        x = self.dec_pos(query_positions) + self.class_emb(labels).unsqueeze(1)
        cos, sin = self.rope(query_positions)
        for layer, (k, v) in zip(self.decoder, kvs):
            x = layer(x, cos, sin, k, v, cross_spec, self_spec)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)

    # ---- training ------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, partition: Partition):
        """Teacher-forced pass over every set at once.

        tokens (B, N) row-major grid, labels (B,). Returns (hidden (B, N, d), targets (B, N)),
        both along the generation order; hidden[:, i] predicts targets[:, i].
        """
        b, n = tokens.shape
        if n != self.cfg.num_tokens:
            raise UserError(f"SAR: batch has {n} tokens per image, the model was built for grid "
                            f"{self.cfg.grid} = {self.cfg.num_tokens}; set module.model.grid")
        order = partition.order.to(tokens.device)
        targets = tokens.gather(1, order)
        sets = partition.set_ids(tokens.device)
        n_enc = n - partition.sizes[-1]
        cls_x, cls_pos = self.class_tokens(labels)
        enc_pos = torch.cat([cls_pos, order[:, :n_enc]], 1)
        enc_x = torch.cat([cls_x, self.token_inputs(targets[:, :n_enc], order[:, :n_enc])], 1)
        enc_sets = with_class(sets[:n_enc])
        memory = self.encode(enc_x, enc_pos,
                             AttentionSpec(causal=False, mask=as_spec_mask(encoder_mask(enc_sets))))
        kvs = self.memory_kv(memory, enc_pos)
        cross = AttentionSpec(causal=False, mask=as_spec_mask(decoder_cross_mask(sets, enc_sets)))
        own = AttentionSpec(causal=False, mask=as_spec_mask(decoder_self_mask(sets)))
        return self.decode(order, labels, kvs, cross, own), targets

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
