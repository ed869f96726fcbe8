"""Latent spans: continuous reasoning steps between `<|latent_start|>` and `<|latent_end|>`
(Future-L1, after Coconut's "continuous thought").

Inside a span the model's next input is not a token embedding but a latent: its own last
(final-norm) hidden state, or that state through a `ProjectionHead` (LayerNorm -> Linear ->
SwiGLU -> Linear, back to the LM's input width). In a token sequence each latent step occupies
one `<|latent_pad|>` slot, so a reply with one span reads

    <|latent_start|> <|latent_pad|> x k <|latent_end|> answer ...

and positions advance by one per slot, as for any text token.

Decoding (`LatentSpans`, a `step_hook` of `framelab.models.generation.decode`): a row that samples
`<|latent_start|>` enters a span; at each later step of the span it feeds a latent (reported as
`<|latent_pad|>`, log-prob 0) unless it sampled `<|latent_end|>` (an early end, a real sample) or
has fed `budget` latents already (then `<|latent_end|>` is forced, log-prob 0). Whatever else the
model samples inside a span is ignored (a sampled end-of-turn does not stop the row; with
`min_steps` > 0, so is a `<|latent_end|>` sampled before that many latents). The hook
records per step and row the kind of slot (TEXT, LATENT, FORCED_END), the latent fed (z) and its
mean (mu: equal to z unless a `sampler` draws z around mu).

Teacher forcing (`latent_hidden_states`): the same token layout, with the latents written into
the `<|latent_pad|>` slots' input embeddings (row-major order); fed the latents a decode recorded,
it reproduces the decode's hidden states (tests/models/test_latent.py).

`pool_targets(features, k)`: average-pool (n, D) features to k rows (the span budget), as
Future-L1's alignment targets are the future frames' vision embeddings pooled to the budget.
`sample_vmf(mu, kappa)`: a draw from the von Mises-Fisher distribution (Wood's algorithm).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from framelab.kernels import AttentionSpec, swiglu

TEXT, LATENT, FORCED_END = 0, 1, 2


class ProjectionHead(nn.Module):
    """LayerNorm -> Linear -> SwiGLU -> Linear, from the LM's hidden width back to its input."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or 2 * dim
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.up(self.norm(x)).chunk(2, dim=-1)
        return self.down(swiglu(gate.contiguous(), up.contiguous()))


def latent_of(model, hidden: torch.Tensor) -> torch.Tensor:
    """The latent a hidden state feeds back: through the model's `latent_head` when it has one."""
    head = getattr(model, "latent_head", None)
    return head(hidden) if head is not None else hidden


class LatentSpans:
    """The decode-time step hook (see the module docstring). `model`: the `MultimodalLM` (for its
    optional `latent_head`); `rows`: the decode's batch size; `budget`: latents per span at most;
    `sampler(mu) -> z`: None for deterministic latents (z = mu); `open_rows` (B,) bool: rows whose
    prompt already ends with `<|latent_start|>` (they start inside a span); `min_steps`: a sampled
    `<|latent_end|>` ends a span only after this many latents (before, it counts as a latent)."""

    def __init__(self, model, rows: int, start_id: int, end_id: int, pad_id: int, budget: int,
                 sampler=None, open_rows: torch.Tensor | None = None, min_steps: int = 0):
        if budget < 1:
            raise ValueError(f"a latent span needs a budget of at least 1, got {budget}")
        self.model, self.start, self.end, self.pad = model, start_id, end_id, pad_id
        self.budget, self.sampler, self.min_steps = int(budget), sampler, int(min_steps)
        self.in_span = (torch.zeros(rows, dtype=torch.bool) if open_rows is None
                        else open_rows.detach().cpu().bool().clone())
        self.count = torch.zeros(rows, dtype=torch.long)
        self.kinds: list[torch.Tensor] = []      # per step (B,): TEXT / LATENT / FORCED_END
        self.mus: list[torch.Tensor] = []        # per step (B, D)
        self.zs: list[torch.Tensor] = []

    def __call__(self, step: int, tokens: torch.Tensor, hidden: torch.Tensor):
        dev = tokens.device
        in_span, count = self.in_span.to(dev), self.count.to(dev)
        live = tokens >= 0
        span = in_span & live
        early = span & (tokens == self.end) & (count >= self.min_steps)
        forced = span & ~early & (count >= self.budget)
        latent = span & ~early & ~forced
        entering = ~in_span & live & (tokens == self.start)
        mu = latent_of(self.model, hidden)
        z = self.sampler(mu) if self.sampler is not None else mu
        report = torch.where(latent, torch.full_like(tokens, self.pad), tokens)
        report = torch.where(forced, torch.full_like(tokens, self.end), report)
        kind = torch.full_like(tokens, TEXT)
        kind = torch.where(latent, torch.full_like(tokens, LATENT), kind)
        kind = torch.where(forced, torch.full_like(tokens, FORCED_END), kind)
        self.kinds.append(kind.cpu())
        self.mus.append(mu.detach())
        self.zs.append(z.detach())
        self.in_span = (entering | latent).cpu()
        self.count = torch.where(latent, count + 1, torch.zeros_like(count)).cpu()
        return z, latent, report

    def rows(self, lengths: list[int]) -> list[dict]:
        """Per row, for its first `lengths[i]` steps: `kinds` (list), and the latent steps' `z`
        and `mu` (k, D) in order."""
        if not self.kinds:
            return [{"kinds": [], "z": None, "mu": None} for _ in lengths]
        kinds = torch.stack(self.kinds, 1)
        mus, zs = torch.stack(self.mus, 1), torch.stack(self.zs, 1)
        out = []
        for i, n in enumerate(lengths):
            k = kinds[i, :n]
            at = (k == LATENT).nonzero().flatten().to(zs.device)
            out.append({"kinds": k.tolist(), "z": zs[i, at], "mu": mus[i, at]})
        return out


def splice_latents(embeds: torch.Tensor, input_ids: torch.Tensor, pad_id: int,
                   latents: torch.Tensor | None) -> torch.Tensor:
    """`embeds` (B, S, D) with the `<|latent_pad|>` slots' inputs replaced by `latents` (n, D),
    row-major; n must equal the number of slots."""
    slots = input_ids == pad_id
    n = int(slots.sum())
    if n == 0:
        return embeds
    if latents is None or latents.shape[0] != n:
        got = 0 if latents is None else latents.shape[0]
        raise ValueError(f"{n} latent slots in input_ids but {got} latents")
    return embeds.masked_scatter(slots[..., None], latents.to(embeds.dtype))


def latent_hidden_states(model, input_ids: torch.Tensor, videos, cu_seqlens, pad_id: int,
                         latents: torch.Tensor | None) -> torch.Tensor:
    """Final hidden states of a `MultimodalLM` forward with latents at the latent slots."""
    inputs = model.prepare(input_ids, videos, cu_seqlens)
    embeds = splice_latents(inputs.embeds, input_ids, pad_id, latents)
    spec = AttentionSpec(causal=True, cu_seqlens=cu_seqlens)
    return model.lm.hidden_states(inputs_embeds=embeds, positions=inputs.positions, spec=spec,
                                  deepstack=inputs.deepstack, cue=inputs.cue)


def pool_targets(features: torch.Tensor, k: int) -> torch.Tensor:
    """(n, D) -> (k, D): average pooling over n into k bins (bins repeat rows when n < k)."""
    return F.adaptive_avg_pool1d(features.t()[None].float(), k)[0].t().to(features.dtype)


def sample_vmf(mu: torch.Tensor, kappa: float | torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Unit vectors (..., D) drawn from vMF(mu / |mu|, kappa) (Wood, 1994)."""
    shape, d = mu.shape, mu.shape[-1]
    mean = F.normalize(mu.reshape(-1, d).float(), dim=-1)
    n = mean.shape[0]
    kap = torch.as_tensor(kappa, dtype=torch.float32, device=mu.device).expand(n).clamp(min=1e-6)
    b = (-2 * kap + torch.sqrt(4 * kap ** 2 + (d - 1) ** 2)) / (d - 1)
    x0 = (1 - b) / (1 + b)
    c = kap * x0 + (d - 1) * torch.log(1 - x0 ** 2)
    w = torch.empty(n, device=mu.device)
    todo = torch.ones(n, dtype=torch.bool, device=mu.device)
    for _ in range(1000):
        if not bool(todo.any()):
            break
        # Beta((d-1)/2, (d-1)/2) as X / (X + Y), X, Y ~ chi^2(d-1): draws from `generator` only
        x = torch.randn(2, n, d - 1, device=mu.device, generator=generator).pow(2).sum(-1)
        eps = x[0] / (x[0] + x[1])
        u = torch.rand(n, device=mu.device, generator=generator)
        cand = (1 - (1 + b) * eps) / (1 - (1 - b) * eps)
        ok = kap * cand + (d - 1) * torch.log(1 - x0 * cand) - c >= torch.log(u)
        w = torch.where(todo & ok, cand, w)
        todo = todo & ~ok
    v = torch.randn(n, d, device=mu.device, generator=generator)
    v = F.normalize(v - (v * mean).sum(-1, keepdim=True) * mean, dim=-1)
    z = w[:, None] * mean + torch.sqrt((1 - w ** 2).clamp(min=0))[:, None] * v
    return z.reshape(shape).to(mu.dtype)


def vmf_sampler(kappa: float, generator: torch.Generator | None = None):
    """z ~ vMF around mu on the sphere of radius |mu|, concentration kappa |mu|^2: its density in
    z is proportional to exp(kappa <mu, z>), the log-prob LA-DAPO's latent term uses."""
    def draw(mu: torch.Tensor) -> torch.Tensor:
        norm = mu.norm(dim=-1, keepdim=True)
        return sample_vmf(mu, kappa * norm[..., 0] ** 2, generator) * norm
    return draw


__all__ = ["TEXT", "LATENT", "FORCED_END", "ProjectionHead", "LatentSpans", "latent_of",
           "splice_latents", "latent_hidden_states", "pool_targets", "sample_vmf", "vmf_sampler"]
