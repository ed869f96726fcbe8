"""Autoregressive generation for a batch of prompts of different lengths.

Prompts are left-padded to a common length; a key-padding mask keeps padding invisible and each
row's positions start at 0 at its first real token, so a row decodes exactly as it would alone.
With `use_cache=True` the prompt is prefilled once and each step feeds one token per row; with
`use_cache=False` every step re-runs the whole sequence (the reference the cache is tested against).
Sampling: greedy (temperature 0), temperature, top-k, top-p; a row stops at any of `stop_tokens`
(the stop token is kept in its output) or after `max_new_tokens`.
"""
from __future__ import annotations

import torch

from framelab.kernels import AttentionSpec


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row from logits (B, V)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = probs.cumsum(dim=-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _mask(valid: torch.Tensor, queries: int) -> torch.Tensor:
    """(B, 1, Sq, Sk) mask: causal is applied by the spec; here keys must be real tokens, and a
    padding query sees itself so that no row of the softmax is empty."""
    sk = valid.shape[1]
    keys = valid[:, None, None, :].expand(-1, 1, queries, sk)
    own = torch.arange(sk - queries, sk, device=valid.device)[:, None] == torch.arange(
        sk, device=valid.device)[None, :]
    return keys | own[None, None]


def _positions(valid: torch.Tensor) -> torch.Tensor:
    """Each row counts positions from its first real token (padding gets 0)."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def generate(model, prompts, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, stop_tokens=(),
             pad_id: int = 0, use_cache: bool = True,
             generator: torch.Generator | None = None) -> list[list[int]]:
    """Generate from a `DecoderLM`. `prompts`: a list of token-id lists (any lengths) or (B, S)."""
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    device = model.output_weight.device
    width = max(len(p) for p in prompts)
    if width == 0:
        raise ValueError("every prompt needs at least one token")
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros_like(ids, dtype=torch.bool)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
        valid[row, width - len(p):] = True
    stops = torch.tensor(sorted(set(stop_tokens)) or [-1], device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in prompts]
    cache = model.new_cache(width + max_new_tokens) if use_cache else None
    step_ids, step_valid = ids, valid
    for _ in range(max_new_tokens):
        q = step_ids.shape[1]
        spec = AttentionSpec(causal=True, mask=_mask(valid, q))
        pos = _positions(valid)[:, -q:]
        hidden = model.hidden_states(step_ids, positions=pos, spec=spec, cache=cache)
        nxt = sample_next(model.logits(hidden[:, -1]), temperature, top_k, top_p, generator)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        for row in (~done).nonzero().flatten().tolist():
            out[row].append(int(nxt[row]))
        done |= torch.isin(nxt, stops)
        if bool(done.all()):
            break
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        valid = torch.cat([valid, torch.ones_like(done[:, None])], dim=1)
        step_ids = nxt[:, None] if use_cache else ids
    return out


@torch.no_grad()
def generate_multimodal(model, prompts, videos, max_new_tokens: int, temperature: float = 0.0,
                        top_k: int | None = None, top_p: float | None = None, stop_tokens=(),
                        pad_id: int = 0, generator: torch.Generator | None = None) -> list[list[int]]:
    """Generate from a `MultimodalLM`, cached. `prompts`: token-id lists holding a placeholder run
    per video; `videos[i]`: row i's videos (T, 3, H, W) in order. Each row's prompt is embedded
    alone (vision tokens spliced in, 3D positions from its first token), left-padded, prefilled
    once; every new text token then takes the next position on all three axes (last + 1)."""
    lm = model.lm
    device = lm.output_weight.device
    rows = [model.embed(torch.tensor([p], dtype=torch.long, device=device), v or None)
            for p, v in zip(prompts, videos)]
    width = max(len(p) for p in prompts)
    embeds = torch.zeros(len(prompts), width, lm.config.hidden, device=device,
                         dtype=rows[0][0].dtype)
    positions = torch.zeros(3, len(prompts), width, dtype=torch.long, device=device)
    valid = torch.zeros(len(prompts), width, dtype=torch.bool, device=device)
    for row, (emb, pos) in enumerate(rows):
        n = emb.shape[1]
        embeds[row, width - n:], positions[:, row, width - n:] = emb[0], pos[:, 0]
        valid[row, width - n:] = True
    next_pos = positions[:, :, -1] + 1
    stops = torch.tensor(sorted(set(stop_tokens)) or [-1], device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in prompts]
    cache = lm.new_cache(width + max_new_tokens)
    hidden = lm.hidden_states(inputs_embeds=embeds, positions=positions,
                              spec=AttentionSpec(causal=True, mask=_mask(valid, width)), cache=cache)
    for step in range(max_new_tokens):
        nxt = sample_next(lm.logits(hidden[:, -1]), temperature, top_k, top_p, generator)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        for row in (~done).nonzero().flatten().tolist():
            out[row].append(int(nxt[row]))
        done |= torch.isin(nxt, stops)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        valid = torch.cat([valid, torch.ones_like(done[:, None])], dim=1)
        hidden = lm.hidden_states(nxt[:, None], positions=next_pos[..., None],
                                  spec=AttentionSpec(causal=True, mask=_mask(valid, 1)), cache=cache)
        next_pos = next_pos + 1
    return out
