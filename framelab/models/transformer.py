"""The decoder-only language model of the Qwen3 family, readable in one sitting.

    tokens -> embedding -> N × [RMSNorm -> attention -> +residual, RMSNorm -> SwiGLU -> +residual]
           -> final RMSNorm -> LM head (tied to the embedding or not)

Inputs: `input_ids` (B, S) or `inputs_embeds` (B, S, hidden); positions (B, S) for text or
(3, B, S) for multimodal (t, h, w) rotary positions; an `AttentionSpec` (causal, packed documents
via cu_seqlens, or a block mask); an optional `KVCache` for prefill + incremental decode.
Module names follow the Hugging Face Qwen3 checkpoint layout so weights map one to one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from framelab.kernels import AttentionSpec
from framelab.kernels.attention import document_ids
from framelab.models.attention import GroupedQueryAttention, make_attention
from framelab.models.cache import KVCache
from framelab.models.config import ModelConfig
from framelab.models.layers import RMSNorm, SwiGLUMLP
from framelab.models.rope import RotaryEmbedding


@dataclass
class LMOutput:
    logits: torch.Tensor | None
    hidden_states: torch.Tensor


class Block(nn.Module):
    """Pre-norm transformer block; also the vision encoder's block (with full attention)."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int,
                 eps: float = 1e-6, qk_norm: bool = True, attn: nn.Module | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(hidden, eps)
        # `attn` replaces the default GQA layer (the decoder passes M²LA when model.attention=mla)
        self.self_attn = attn or GroupedQueryAttention(hidden, heads, kv_heads, head_dim, qk_norm,
                                                       eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)
        self.mlp = SwiGLUMLP(hidden, intermediate)

    def forward(self, x, cos, sin, spec, cache=None, layer=0):
        attn = self.self_attn(self.input_layernorm(x), cos, sin, spec, cache, layer)
        h, x = self.post_attention_layernorm.add_and_norm(attn, x)
        return x + self.mlp(h)


def default_positions(batch: int, seq: int, offset: int, spec: AttentionSpec | None,
                      device) -> torch.Tensor:
    """0..S-1 after `offset` cached tokens; restarted at each document of a packed row."""
    pos = torch.arange(offset, offset + seq, device=device)
    if spec is not None and spec.cu_seqlens is not None:
        cu = spec.cu_seqlens.to(device)
        pos = pos - cu[document_ids(cu, seq)]
    return pos.unsqueeze(0).expand(batch, seq)


class DecoderLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden)
        self.layers = nn.ModuleList(
            Block(config.hidden, config.heads, config.kv_heads, config.head_dim,
                  config.intermediate, config.norm_eps, config.qk_norm, make_attention(config))
            for _ in range(config.layers))
        self.norm = RMSNorm(config.hidden, config.norm_eps)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.hidden, config.vocab_size,
                                                                    bias=False)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.mrope_section,
                                      config.mrope_interleaved)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.weight_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    @property
    def output_weight(self) -> torch.Tensor:
        """The LM head's weight (V, hidden): the embedding when tied."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def set_rope_theta(self, theta: float) -> None:
        """Change the rotary base in place (short-to-long curricula may raise it per phase)."""
        cfg = self.config
        cfg.rope_theta = theta
        self.rotary = RotaryEmbedding(cfg.head_dim, theta, cfg.mrope_section,
                                      cfg.mrope_interleaved).to(self.embed_tokens.weight.device)

    def hidden_states(self, input_ids=None, inputs_embeds=None, positions=None,
                      spec: AttentionSpec | None = None, cache: KVCache | None = None,
                      deepstack: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
                      cue=None):
        """Final-norm hidden states (B, S, hidden); the loss is computed from these.

        `deepstack` = (mask (B, S) bool, [features (n, hidden)] * L): after layer i < L the
        features of entry i are added to the hidden states at the n True positions of `mask`, in
        row-major order (Qwen3-VL's DeepStack; transformers' `_deepstack_process`).
        `cue`: a `framelab.models.cue_recovery.CueInputs`; its `after_layer(i, x)` runs after
        layer i (ViCuR's sink-token cue recovery, prefill only: the caller passes it then)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, s = x.shape[:2]
        spec = spec or AttentionSpec(causal=True)
        if positions is None:
            positions = default_positions(b, s, cache.seen if cache else 0, spec, x.device)
        if positions.dim() == 2 and len(self.rotary.sections) > 1:
            positions = positions.unsqueeze(0).expand(len(self.rotary.sections), b, s)
        cos, sin = self.rotary(positions)
        adds = deepstack[1] if deepstack is not None else []
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, spec, cache, i)
            if i < len(adds):
                mask = deepstack[0]
                x = x.index_put((mask,), x[mask] + adds[i].to(x.dtype))
            if cue is not None:
                x = cue.after_layer(i, x)
        if cache is not None:
            cache.advance(s)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.output_weight.t()

    def forward(self, input_ids=None, inputs_embeds=None, positions=None,
                spec: AttentionSpec | None = None, cache: KVCache | None = None,
                deepstack=None, cue=None) -> LMOutput:
        hidden = self.hidden_states(input_ids, inputs_embeds, positions, spec, cache, deepstack,
                                    cue)
        return LMOutput(logits=self.logits(hidden), hidden_states=hidden)

    def new_cache(self, capacity: int = 256) -> KVCache:
        """A cache for this model: per layer (k, v) for GQA, (c_kv, k_r) for M²LA."""
        return KVCache(len(self.layers), capacity)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed_tokens.weight.numel()
            if self.lm_head is not None:
                n -= self.lm_head.weight.numel()
        return n
