"""The latent-aware parts of LA-DAPO (Future-L1): plain functions on tensors.

vmf_logprob(mu, z, kappa, normalize)      per latent step, up to the constant log C(kappa):
    log p(z | mu) = kappa <mu, z>                     normalize=False (as written, the default)
                  = kappa <mu / |mu|, z / |z|>        normalize=True  (the unit-sphere vMF)

latent_policy_loss(logp, old_logp, A, clip)   per latent step j of rollout i, A_i broadcast:
    r = exp(logp - old_logp);  L = -min(r A, clip(r, 1 - clip, 1 + clip) A)
    the token mean over all latent steps of the batch (0 when there are none); stats: clip_frac,
    ratio_mean.

contrastive_reward(latents, correct, group_size, tau)   R_ctr, per rollout (the release's form):
    trajectory similarity s(i, j) = mean over the common steps t of (1 + cos(z_i,t, z_j,t)) / 2
    (0 when either has no latent); for a correct rollout i with another correct one in its group:
        s+ = max over correct j != i of s(i, j)
        R_ctr = exp(s+ / tau) / (exp(s+ / tau) + sum over incorrect j of exp(s(i, j) / tau))
    (1 when the group has no incorrect rollout); 0 for incorrect rollouts and for a correct one
    that is alone.

diversity_reward(latents)                   R_div = -mean_t cos^2(z_t, z_t+1) over consecutive
    latent steps of one rollout (0 with fewer than two).

length_penalty(lengths, ref_lengths)        max(0, len - ref_len) per rollout (the caller weighs it
    by -0.001, as released).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def vmf_logprob(mu: torch.Tensor, z: torch.Tensor, kappa: float,
                normalize: bool = False) -> torch.Tensor:
    """(..., D), (..., D) -> (...): kappa <mu, z> (see the module docstring)."""
    if normalize:
        mu, z = F.normalize(mu.float(), dim=-1), F.normalize(z.float(), dim=-1)
    return kappa * (mu.float() * z.float()).sum(-1)


def latent_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                       clip: float) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate over latent steps, token mean (see the module docstring); all
    arguments (n,): one entry per latent step, `adv` its rollout's advantage (a constant)."""
    if logp.numel() == 0:
        zero = logp.sum() * 0.0
        return zero, {"latent_clip_frac": zero.detach(), "latent_ratio_mean": zero.detach() + 1}
    adv = adv.detach()
    ratio = torch.exp(logp - old_logp.detach())
    clipped = ratio.clamp(1 - clip, 1 + clip)
    loss = -torch.minimum(ratio * adv, clipped * adv)
    frac = ((ratio - clipped).abs() > 0) & ((ratio * adv) > (clipped * adv))
    return loss.mean(), {"latent_clip_frac": frac.float().mean().detach(),
                         "latent_ratio_mean": ratio.mean().detach()}


def trajectory_similarity(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """Mean over the common steps of (1 + cos) / 2 between two (k, D) latent trajectories."""
    if a is None or b is None or a.shape[0] == 0 or b.shape[0] == 0:
        return 0.0
    n = min(a.shape[0], b.shape[0])
    cos = F.cosine_similarity(a[:n].float(), b[:n].float(), dim=-1)
    return float(((1 + cos) / 2).mean())


def contrastive_reward(latents: list, correct: list[bool], group_size: int,
                       tau: float = 0.5) -> list[float]:
    """R_ctr per rollout (see the module docstring); `latents[i]`: (k_i, D) or None."""
    out = [0.0] * len(latents)
    for lo in range(0, len(latents), group_size):
        idx = range(lo, lo + group_size)
        for i in idx:
            if not correct[i]:
                continue
            pos = [trajectory_similarity(latents[i], latents[j]) for j in idx
                   if j != i and correct[j]]
            if not pos:
                continue
            top = math.exp(max(pos) / tau)
            neg = sum(math.exp(trajectory_similarity(latents[i], latents[j]) / tau) for j in idx
                      if not correct[j])
            out[i] = top / (top + neg)
    return out


def diversity_reward(latents: torch.Tensor | None) -> float:
    """R_div of one rollout's (k, D) latents (see the module docstring)."""
    if latents is None or latents.shape[0] < 2:
        return 0.0
    cos = F.cosine_similarity(latents[:-1].float(), latents[1:].float(), dim=-1)
    return -float((cos ** 2).mean())


def length_penalty(lengths: list[int], ref_lengths: list[int]) -> list[float]:
    """max(0, len - ref_len) per rollout."""
    return [float(max(0, n - r)) for n, r in zip(lengths, ref_lengths)]
