"""Advantages and losses of the RL engine: plain functions on tensors.

Shapes: B sequences, T completion positions (padded), V vocabulary, D hidden size. `mask` (B, T)
marks the tokens that carry loss; padded positions must hold finite values (they are zeroed with
`torch.where`, never read).

group_advantages(r, G, scale)     rows i = g*G .. g*G+G-1 form group g (N = prompts x G):
    A_i = r_i - mean_g(r)                                          scale="none"  (Dr. GRPO)
    A_i = (r_i - mean_g(r)) / (std_g(r) + eps)                     scale="group" (GRPO)
    A_i = (r_i - mean_g(r)) / (std(r over the batch) + eps)        scale="batch"
    std is the unbiased (Bessel, n - 1) estimate, as TRL's GRPOTrainer (`nanstd`) and verl's
    `torch.std`; a single value has std 0 (TRL's convention, so G = 1 gives A = 0).

policy_loss(logp, old_logp, A, mask, ...)   per token t of sequence i, A broadcast from (B,):
    ratio   r = exp(logp - old_logp)                                importance="token"
            s_i = exp(sum_t m (logp - old_logp) / sum_t m)          importance="sequence" (GSPO)
            r = sg[s_i] * exp(logp - sg[logp])  (value s_i, gradient s_i * d logp per token)
    surrogate  L = -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)
    dual clip  L = min(L, -c A)  where A < 0                        (verl's clip_ratio_c = c > 1)
    KL         L += kl_coef * (exp(ref - logp) - (ref - logp) - 1)   (k3, per token)
    aggregation over the masked tokens:
        "grpo"     mean_i [ sum_t m L / max(sum_t m, 1) ]  (a sequence without tokens adds 0 and
                   still counts in the mean over B, as TRL's `.clamp(min=1.0)` does)
        "dapo"     sum_it m L / max(sum_it m, 1)           (token mean over the batch)
        "dr_grpo"  sum_it m L / (B * max_len)              (max_len defaults to T; TRL uses
                   max_completion_length, pass it as max_len to match)
    A is a constant (detached). stats (detached 0-d tensors, means over the masked tokens, so with
    importance="sequence" a sequence counts once per token): clip_frac_low = [r < 1 - clip_low,
    A < 0], clip_frac_high = [r > 1 + clip_high, A > 0], clip_frac = either (TRL's definitions),
    dual_clip_frac = [A < 0, surrogate > -c A] (verl's pg_clipfrac_lower), kl (the k3 value, also
    when kl_coef = 0), entropy (of the given (B, T) entropies), ratio_mean.

generalized_jsd(student_logits, teacher_logits, beta, temperature, mask)  (TRL GKDTrainer):
    S = log_softmax(student / temperature), T = log_softmax(teacher / temperature)
    beta = 0: KL(T || S) = sum_v e^T (T - S);   beta = 1: KL(S || T)
    else  M = logsumexp(S + log(1 - beta), T + log beta)  (the mixture (1 - beta) p_S + beta p_T)
          JSD_beta = beta KL(T || M) + (1 - beta) KL(S || M)
    result: the sum over the masked tokens' vocabularies / the number of masked tokens (TRL's
    "batchmean" with labels != -100; mask=None means every token, which is TRL with all labels
    valid, not TRL's labels=None that divides by B).
chunked_generalized_jsd: the same value from hidden states (B, S, D) and output weights (V, D),
    logits = hidden @ weight.T, one chunk of masked tokens at a time under activation
    checkpointing, so neither forward nor backward holds more than a chunk of (chunk, V) logits.

opd_advantages(student_logp, teacher_logp, coef, mask, clamp, logp_floor)
    = -coef (student_logp - teacher_logp) per token, 0 where mask is false, detached: the k1
    estimate of -KL(student || teacher) on the student's own samples, used as a per-token advantage
    with no discounting (on-policy distillation). ViCuR's release clamps: `logp_floor` (-10) bounds
    both log-probs from below before the difference, `clamp` (10) bounds the difference to
    [-clamp, clamp]; None: no clamp.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

SCALES = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
IMPORTANCE = ("token", "sequence")


def _std(x: torch.Tensor, dim=None) -> torch.Tensor:
    """Unbiased std; 0 where there is a single value (instead of torch's nan)."""
    n = x.numel() if dim is None else x.shape[dim]
    if n < 2:
        return torch.zeros_like(x.mean() if dim is None else x.mean(dim))
    return x.std() if dim is None else x.std(dim)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """(N,) rewards, consecutive groups of `group_size` -> (N,) advantages (see module doc)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (N,) with N divisible by group_size={group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)
    adv = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        adv = adv / (_std(grouped, dim=1).unsqueeze(1) + eps)
    elif scale == "batch":
        adv = adv / (_std(rewards) + eps)
    return adv.reshape(-1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, 0).sum() / mask.sum().clamp(min=1)


def policy_loss(logp, old_logp, advantages, mask, loss_type: str = "grpo", clip_low: float = 0.2,
                clip_high: float | None = None, dual_clip: float | None = None,
                importance: str = "token", ref_logp=None, kl_coef: float = 0.0, entropy=None,
                max_len: int | None = None):
    """Clipped surrogate (+ k3 KL) aggregated by `loss_type` -> (loss, stats); see module doc."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if importance not in IMPORTANCE:
        raise ValueError(f"importance must be one of {IMPORTANCE}, got {importance!r}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    if logp.dim() != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError("logp, old_logp and mask must all be (B, T)")
    if advantages.shape not in (logp.shape[:1], logp.shape):
        raise ValueError(f"advantages must be (B,) or (B, T), got {tuple(advantages.shape)}")
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    clip_high = clip_low if clip_high is None else clip_high
    mask = mask.bool()
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    adv = adv.detach().expand_as(logp)
    # positions outside the mask may hold -inf (a tool result's suppressed video placeholders):
    # zero them first, or exp(-inf - -inf) sends NaN back through the masked terms
    logp, old_logp = torch.where(mask, logp, 0.0), torch.where(mask, old_logp, 0.0)
    if ref_logp is not None:
        ref_logp = torch.where(mask, ref_logp, 0.0)

    log_ratio = logp - old_logp
    if importance == "token":
        ratio = torch.exp(log_ratio)
    else:
        count = mask.sum(1, keepdim=True).clamp(min=1)
        seq_log_ratio = torch.where(mask, log_ratio, 0).sum(1, keepdim=True) / count
        ratio = torch.exp(seq_log_ratio.detach() + logp - logp.detach())

    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    stats = {}
    if dual_clip is not None:
        cap = -dual_clip * adv
        dual_active = (adv < 0) & (per_token > cap)
        per_token = torch.where(adv < 0, torch.min(per_token, cap), per_token)
        stats["dual_clip_frac"] = _masked_mean(dual_active.to(logp.dtype), mask)
    if ref_logp is not None:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl
        stats["kl"] = _masked_mean(kl.detach(), mask)

    summed = torch.where(mask, per_token, 0)
    if loss_type == "grpo":
        loss = (summed.sum(1) / mask.sum(1).clamp(min=1)).mean()
    elif loss_type == "dapo":
        loss = summed.sum() / mask.sum().clamp(min=1)
    else:
        loss = summed.sum() / (logp.shape[0] * (max_len or logp.shape[1]))

    with torch.no_grad():
        low = (ratio < 1 - clip_low) & (adv < 0)
        high = (ratio > 1 + clip_high) & (adv > 0)
        stats["clip_frac_low"] = _masked_mean(low.to(logp.dtype), mask)
        stats["clip_frac_high"] = _masked_mean(high.to(logp.dtype), mask)
        stats["clip_frac"] = _masked_mean((low | high).to(logp.dtype), mask)
        stats["ratio_mean"] = _masked_mean(ratio, mask)
        if entropy is not None:
            stats["entropy"] = _masked_mean(entropy, mask)
    return loss, {k: v.detach() for k, v in stats.items()}


def _check_jsd_args(beta: float, temperature: float) -> None:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _token_jsd(student_logits, teacher_logits, beta: float, temperature: float) -> torch.Tensor:
    """(..., V) logits -> (...,) generalized JSD of each position, summed over the vocabulary."""
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    if beta == 0:
        return (t.exp() * (t - s)).sum(-1)
    if beta == 1:
        return (s.exp() * (s - t)).sum(-1)
    m = torch.logsumexp(torch.stack([s + math.log1p(-beta), t + math.log(beta)]), dim=0)
    return (beta * t.exp() * (t - m) + (1 - beta) * s.exp() * (s - m)).sum(-1)


def generalized_jsd(student_logits, teacher_logits, beta: float = 0.5, temperature: float = 1.0,
                    mask=None) -> torch.Tensor:
    """(B, S, V) logits -> mean over the masked tokens of the generalized JSD (TRL's GKD loss)."""
    _check_jsd_args(beta, temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError("student_logits and teacher_logits must have the same shape")
    jsd = _token_jsd(student_logits, teacher_logits, beta, temperature)
    if mask is None:
        return jsd.mean()
    mask = mask.bool()
    return torch.where(mask, jsd, 0).sum() / mask.sum().clamp(min=1)


def chunked_generalized_jsd(student_hidden, student_weight, teacher_hidden, teacher_weight,
                            beta: float = 0.5, temperature: float = 1.0, mask=None,
                            chunk_size: int = 1024) -> torch.Tensor:
    """`generalized_jsd` of hidden @ weight.T, computed `chunk_size` masked tokens at a time."""
    _check_jsd_args(beta, temperature)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError("student_hidden and teacher_hidden must share (B, S)")
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError("student_weight and teacher_weight must share the vocabulary size V")
    if mask is None:
        hs = student_hidden.reshape(-1, student_hidden.shape[-1])
        ht = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
    else:
        hs, ht = student_hidden[mask.bool()], teacher_hidden[mask.bool()]

    def chunk_sum(h_s, w_s, h_t, w_t):
        return _token_jsd(h_s @ w_s.T, h_t @ w_t.T, beta, temperature).sum()

    total = hs.new_zeros(())
    for start in range(0, hs.shape[0], chunk_size):
        end = start + chunk_size
        total = total + checkpoint(chunk_sum, hs[start:end], student_weight, ht[start:end],
                                   teacher_weight, use_reentrant=False)
    return total / max(hs.shape[0], 1)


def opd_advantages(student_logp, teacher_logp, coef: float = 1.0, mask=None,
                   clamp: float | None = None, logp_floor: float | None = None) -> torch.Tensor:
    """(B, T) per-token on-policy-distillation advantages -coef (log p_student - log p_teacher)."""
    if student_logp.shape != teacher_logp.shape:
        raise ValueError("student_logp and teacher_logp must have the same shape")
    if logp_floor is not None:
        student_logp = student_logp.clamp(min=float(logp_floor))
        teacher_logp = teacher_logp.clamp(min=float(logp_floor))
    k1 = (student_logp - teacher_logp).detach()
    if clamp is not None:
        k1 = k1.clamp(-float(clamp), float(clamp))
    adv = -coef * k1
    if mask is None:
        return adv
    if mask.shape != adv.shape:
        raise ValueError("mask must have the shape of student_logp")
    return torch.where(mask.bool(), adv, 0)
