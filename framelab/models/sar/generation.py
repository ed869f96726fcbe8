"""Set-by-set generation with the Fully Masked Transformer, with or without the encoder KV cache.

Step k decodes the queries of set k and samples their tokens. Before it, the encoder must have
seen every token of sets < k:
- `use_cache=True` (SAR): the encoder's self-attention keys/values and the decoder's cross-attention
  keys/values of the memory live in two `KVCache`s; step k encodes only set k-1 (the class token at
  step 0), which may see every cached token and itself -- exactly its rows of the block-causal
  mask. Cost per step: the new set, not the prefix.
- `use_cache=False` (the reference, and the MAR-like baseline of the benchmark): step k re-encodes
  the class token and all tokens of sets < k from scratch under the block-causal mask.
Both consume the random generator identically, so with a fixed seed they return the same tokens
(tested).

Sampling: logits / temperature (0 = greedy), optional top-k, classifier-free guidance
logits = uncond + scale * (cond - uncond) with the conditional and null-class rows in one batch.
The guidance schedule (the paper does not give one): `constant`, or `linear` as in MAR:
scale_k = 1 + (scale - 1) * (tokens known after step k) / N.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from framelab.errors import UserError
from framelab.kernels import AttentionSpec
from framelab.models.cache import KVCache
from framelab.models.sar.fmt import FullyMaskedTransformer
from framelab.models.sar.masks import as_spec_mask, encoder_mask, with_class
from framelab.models.sar.partition import Partition

CFG_SCHEDULES = ("constant", "linear")


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_k: int = 0                # 0 = the whole codebook
    cfg_scale: float = 1.0        # 1 = no guidance (no null-class rows are run)
    cfg_schedule: str = "constant"

    def __post_init__(self):
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise UserError(f"SAR sampling: cfg_schedule {self.cfg_schedule!r} is not one of "
                            f"{', '.join(CFG_SCHEDULES)}")
        if self.temperature < 0 or self.top_k < 0:
            raise UserError("SAR sampling: temperature and top_k must be >= 0")

    def guidance(self, known_after: int, total: int) -> float:
        if self.cfg_schedule == "linear":
            return 1.0 + (self.cfg_scale - 1.0) * known_after / total
        return self.cfg_scale


def sample_logits(logits: torch.Tensor, temperature: float, top_k: int,
                  generator: torch.Generator | None) -> torch.Tensor:
    """(B, S, V) logits -> (B, S) token ids."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1).reshape(-1, logits.shape[-1])
    return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])


@torch.no_grad()
def generate(model: FullyMaskedTransformer, labels: torch.Tensor, partition: Partition,
             sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """Token grids (B, N), row-major, for class `labels` (B,), generated set by set."""
    sampling = sampling or SamplingConfig()
    b, n = labels.shape[0], model.cfg.num_tokens
    if partition.order.shape != (b, n):
        raise UserError(f"SAR generate: partition order has shape {tuple(partition.order.shape)}, "
                        f"expected ({b}, {n}) for {b} labels and grid {model.cfg.grid}")
    guided = sampling.cfg_scale != 1.0
    order = partition.order.to(labels.device)
    if guided:
        labels = torch.cat([labels, torch.full_like(labels, model.null_class)])
        order = torch.cat([order, order])
    sets = partition.set_ids(labels.device)
    generated = torch.zeros_like(order)          # tokens along the generation order
    caches = (KVCache(len(model.encoder), n + 1), KVCache(len(model.decoder), n + 1)) \
        if use_cache else None
    new_x, new_pos = model.class_tokens(labels)
    full = AttentionSpec(causal=False)
    for start, end in partition.bounds():
        if use_cache:
            memory = model.encode(new_x, new_pos, full, caches[0])
            kvs = model.memory_kv(memory, new_pos, caches[1])
        else:
            cls_x, cls_pos = model.class_tokens(labels)
            pos = torch.cat([cls_pos, order[:, :start]], 1)
            x = torch.cat([cls_x, model.token_inputs(generated[:, :start], order[:, :start])], 1)
            mask = as_spec_mask(encoder_mask(with_class(sets[:start])))
            kvs = model.memory_kv(model.encode(x, pos, AttentionSpec(causal=False, mask=mask)), pos)
        # every memory token belongs to an earlier set, so the queries may see all of it
        hidden = model.decode(order[:, start:end], labels, kvs, full, full)
        logits = model.logits(hidden).float()
        if guided:
            cond, uncond = logits.chunk(2)
            logits = uncond + sampling.guidance(end, n) * (cond - uncond)
        tokens = sample_logits(logits, sampling.temperature, sampling.top_k, generator)
        if guided:
            tokens = torch.cat([tokens, tokens])
        generated[:, start:end] = tokens
        new_x = model.token_inputs(tokens, order[:, start:end])
        new_pos = order[:, start:end]
    out = torch.empty_like(generated[:b])
    return out.scatter_(1, order[:b], generated[:b])
