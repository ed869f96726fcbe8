"""framelab.rl.losses against loop-by-loop references of the formulas and against TRL's GKD loss."""
import math
import statistics
import warnings

import pytest
import torch

from framelab.rl.losses import (chunked_generalized_jsd, generalized_jsd, group_advantages,
                                opd_advantages, policy_loss)

CLIP_LOW, CLIP_HIGH, DUAL = 0.2, 0.28, 1.5
SEED = 9   # a batch that takes every clip branch in both importance modes (checked below)


# ----------------------------------------------------------------------------- group_advantages
def test_group_advantages_three_scales_by_hand():
    r = torch.tensor([1., 0, 0, 0, 2, 2, 2, 2, 0, 1, 2, 3], dtype=torch.float64)
    dev = [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0, -1.5, -0.5, 0.5, 1.5]
    group_std = [0.5] * 4 + [0.0] * 4 + [math.sqrt(5 / 3)] * 4   # unbiased: sum dev^2 / (G - 1)
    batch_std = statistics.stdev(r.tolist())                     # unbiased over all 12
    eps = 1e-4
    torch.testing.assert_close(group_advantages(r, 4, "none"),
                               torch.tensor(dev, dtype=torch.float64))
    torch.testing.assert_close(group_advantages(r, 4, "group"), torch.tensor(
        [d / (s + eps) for d, s in zip(dev, group_std)], dtype=torch.float64))
    torch.testing.assert_close(group_advantages(r, 4, "batch", eps=1e-3), torch.tensor(
        [d / (batch_std + 1e-3) for d in dev], dtype=torch.float64))
    # default scale is "group"; one sample per group has no baseline to compare with -> 0
    torch.testing.assert_close(group_advantages(r, 4), group_advantages(r, 4, "group"))
    assert torch.equal(group_advantages(r, 1), torch.zeros_like(r))


def test_group_advantages_bad_arguments():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(4), 2, scale="std")
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(4), 0)


# ----------------------------------------------------------------------------- policy_loss
def _batch(seed=0, B=6, T=7, token_adv=False):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    # per-token noise plus a per-sequence offset: token and sequence ratios leave the clip range
    old = logp - 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64) \
        - 0.5 * torch.randn(B, 1, generator=g, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    shape = (B, T) if token_adv else (B,)
    adv = torch.randn(shape, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) < 0.7
    mask[0] = False          # a sequence without loss tokens
    mask[1] = True
    mask[2, :4] = True
    entropy = torch.rand(B, T, generator=g, dtype=torch.float64)
    return logp, old, adv, mask, ref, entropy


def _reference(logp, old, adv, mask, loss_type, importance, dual, ref, kl_coef, max_len=None):
    """The formula spelled out one token at a time."""
    B, T = logp.shape
    total, seq_means, n_tokens = 0.0, [], 0
    counts = dict(low=0, high=0, either=0, dual=0)
    for i in range(B):
        tokens = [t for t in range(T) if mask[i, t]]
        if importance == "sequence" and tokens:
            s = torch.exp(sum(logp[i, t] - old[i, t] for t in tokens) / len(tokens))
        seq_sum = 0.0
        for t in tokens:
            a = adv[i] if adv.dim() == 1 else adv[i, t]
            if importance == "token":
                r = torch.exp(logp[i, t] - old[i, t])
            else:
                r = s.detach() * torch.exp(logp[i, t] - logp[i, t].detach())
            r_clip = torch.clamp(r, 1 - CLIP_LOW, 1 + CLIP_HIGH)
            loss = -torch.minimum(r * a, r_clip * a)
            low, high = bool(r < 1 - CLIP_LOW and a < 0), bool(r > 1 + CLIP_HIGH and a > 0)
            counts["low"] += low
            counts["high"] += high
            counts["either"] += low or high
            if dual is not None and a < 0:
                counts["dual"] += bool(loss > -dual * a)
                loss = torch.minimum(loss, -dual * a)
            if ref is not None and kl_coef > 0:
                d = ref[i, t] - logp[i, t]
                loss = loss + kl_coef * (torch.exp(d) - d - 1)
            seq_sum = seq_sum + loss
        n_tokens += len(tokens)
        total = total + seq_sum
        seq_means.append(seq_sum / len(tokens) if tokens else 0.0)
    if loss_type == "grpo":
        value = sum(seq_means) / B
    elif loss_type == "dapo":
        value = total / n_tokens
    else:
        value = total / (B * (max_len or T))
    return value, {k: v / n_tokens for k, v in counts.items()}


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("importance", ["token", "sequence"])
@pytest.mark.parametrize("with_kl", [False, True])
@pytest.mark.parametrize("dual", [None, DUAL])
def test_policy_loss_matches_loop_reference(loss_type, importance, with_kl, dual):
    logp, old, adv, mask, ref, entropy = _batch(seed=SEED)
    ref_logp, kl_coef = (ref, 0.1) if with_kl else (None, 0.0)

    lp = logp.clone().requires_grad_(True)
    loss, stats = policy_loss(lp, old, adv, mask, loss_type=loss_type, clip_low=CLIP_LOW,
                              clip_high=CLIP_HIGH, dual_clip=dual, importance=importance,
                              ref_logp=ref_logp, kl_coef=kl_coef, entropy=entropy)
    (grad,) = torch.autograd.grad(loss, lp)

    lp_ref = logp.clone().requires_grad_(True)
    expected, counts = _reference(lp_ref, old, adv, mask, loss_type, importance, dual, ref_logp,
                                  kl_coef)
    (grad_ref,) = torch.autograd.grad(expected, lp_ref)

    torch.testing.assert_close(loss, expected.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=1e-6)
    assert grad[~mask].abs().max() == 0
    assert stats["clip_frac_low"].item() == pytest.approx(counts["low"], abs=1e-12)
    assert stats["clip_frac_high"].item() == pytest.approx(counts["high"], abs=1e-12)
    assert stats["clip_frac"].item() == pytest.approx(counts["either"], abs=1e-12)
    if dual is not None:
        assert stats["dual_clip_frac"].item() == pytest.approx(counts["dual"], abs=1e-12)
    else:
        assert "dual_clip_frac" not in stats
    assert ("kl" in stats) == with_kl
    assert stats["entropy"].item() == pytest.approx(entropy[mask].mean().item(), abs=1e-12)
    assert all(not v.requires_grad for v in stats.values())


@pytest.mark.parametrize("importance", ["token", "sequence"])
def test_batch_exercises_every_clip_branch(importance):
    """The reference comparison above means something only if every clip branch is taken."""
    logp, old, adv, mask, *_ = _batch(seed=SEED)
    _, counts = _reference(logp, old, adv, mask, "grpo", importance, DUAL, None, 0.0)
    assert counts["low"] > 0 and counts["high"] > 0 and counts["dual"] > 0
    assert counts["either"] < 1


def test_per_token_advantages_and_kl_stat_without_penalty():
    logp, old, adv, mask, ref, _ = _batch(seed=3, token_adv=True)
    loss, stats = policy_loss(logp, old, adv, mask, loss_type="dapo", clip_high=CLIP_HIGH,
                              ref_logp=ref, kl_coef=0.0)
    expected, _ = _reference(logp, old, adv, mask, "dapo", "token", None, None, 0.0)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    d = (ref - logp)[mask]
    assert stats["kl"].item() == pytest.approx((d.exp() - d - 1).mean().item(), abs=1e-12)
    ratio_mean = (logp - old)[mask].exp().mean().item()
    assert stats["ratio_mean"].item() == pytest.approx(ratio_mean, abs=1e-12)


def test_dr_grpo_max_len_and_clip_high_default():
    logp, old, adv, mask, *_ = _batch(seed=4)
    base, _ = policy_loss(logp, old, adv, mask, loss_type="dr_grpo")
    longer, _ = policy_loss(logp, old, adv, mask, loss_type="dr_grpo", max_len=20)
    torch.testing.assert_close(longer, base * logp.shape[1] / 20)
    sym, _ = policy_loss(logp, old, adv, mask, clip_low=0.1, clip_high=0.1)
    default, _ = policy_loss(logp, old, adv, mask, clip_low=0.1)
    wider, _ = policy_loss(logp, old, adv, mask, clip_low=0.1, clip_high=0.5)
    assert torch.equal(sym, default) and not torch.allclose(sym, wider)


def test_sequence_importance_gradient_is_gspo():
    """Under grpo aggregation the token-wise form has the value and gradient of the plain sequence
    ratio s_i = exp(mean log ratio) broadcast over the sequence (TRL's
    importance_sampling_level="sequence")."""
    logp, old, adv, mask, *_ = _batch(seed=5)
    lp = logp.clone().requires_grad_(True)
    loss, _ = policy_loss(lp, old, adv, mask, importance="sequence", clip_high=CLIP_HIGH)
    (grad,) = torch.autograd.grad(loss, lp)

    lp2 = logp.clone().requires_grad_(True)
    m = mask.double()
    s = torch.exp(((lp2 - old) * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1))
    a = adv.unsqueeze(1)
    per_token = -torch.min(s * a, torch.clamp(s, 1 - CLIP_LOW, 1 + CLIP_HIGH) * a)
    trl_form = ((per_token * m).sum(1) / m.sum(1).clamp(min=1)).mean()
    (grad2,) = torch.autograd.grad(trl_form, lp2)
    torch.testing.assert_close(loss, trl_form, rtol=0, atol=1e-10)
    torch.testing.assert_close(grad, grad2, rtol=0, atol=1e-10)


def test_policy_loss_bad_arguments():
    logp, old, adv, mask, *_ = _batch(seed=6)
    for kwargs in (dict(loss_type="bnpo"), dict(importance="seq"), dict(dual_clip=1.0),
                   dict(max_len=0)):
        with pytest.raises(ValueError):
            policy_loss(logp, old, adv, mask, **kwargs)
    with pytest.raises(ValueError):
        policy_loss(logp, old[:, :3], adv, mask)
    with pytest.raises(ValueError):
        policy_loss(logp, old, adv[:2], mask)


# ----------------------------------------------------------------------------- generalized JSD
@pytest.fixture(scope="module")
def trl_jsd():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # TRLExperimentalWarning on import
        try:
            from trl.experimental.gkd import GKDTrainer     # trl >= 0.27
        except ImportError:
            from trl import GKDTrainer                      # trl < 0.29
    return GKDTrainer.generalized_jsd_loss


def _logits(seed, B=3, S=5, V=11):
    g = torch.Generator().manual_seed(seed)
    student = 3 * torch.randn(B, S, V, generator=g, dtype=torch.float64)
    teacher = 3 * torch.randn(B, S, V, generator=g, dtype=torch.float64)
    mask = torch.rand(B, S, generator=g) < 0.6
    mask[0, 0] = True
    return student, teacher, mask


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_generalized_jsd_matches_trl(trl_jsd, beta, temperature):
    student, teacher, mask = _logits(seed=int(10 * beta + temperature))
    labels = torch.where(mask, torch.randint(0, 11, mask.shape), -100)

    s1 = student.clone().requires_grad_(True)
    ours = generalized_jsd(s1, teacher, beta=beta, temperature=temperature, mask=mask)
    s2 = student.clone().requires_grad_(True)
    theirs = trl_jsd(s2, teacher, labels=labels, beta=beta, temperature=temperature,
                     reduction="batchmean")
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(ours, s1)[0], torch.autograd.grad(theirs, s2)[0],
                               rtol=1e-9, atol=1e-12)
    # mask=None: every token, i.e. TRL with no label set to -100
    all_labels = torch.zeros(mask.shape, dtype=torch.long)
    torch.testing.assert_close(generalized_jsd(student, teacher, beta, temperature),
                               trl_jsd(student, teacher, labels=all_labels, beta=beta,
                                       temperature=temperature), rtol=1e-10, atol=1e-12)
    assert ours.item() > 0


def test_generalized_jsd_float32_matches_trl(trl_jsd):
    student, teacher, mask = _logits(seed=7)
    student, teacher = student.float(), teacher.float()
    labels = torch.where(mask, 0, -100)
    torch.testing.assert_close(generalized_jsd(student, teacher, 0.5, 1.0, mask),
                               trl_jsd(student, teacher, labels=labels), rtol=1e-5, atol=1e-6)


def test_generalized_jsd_bad_arguments():
    student, teacher, _ = _logits(seed=8)
    with pytest.raises(ValueError):
        generalized_jsd(student, teacher, beta=1.5)
    with pytest.raises(ValueError):
        generalized_jsd(student, teacher, temperature=0.0)
    with pytest.raises(ValueError):
        generalized_jsd(student, teacher[..., :5])


def _hidden(seed, B=2, S=9, D=8, V=37):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, S, D, generator=g, dtype=torch.float64)
    ws = torch.randn(V, D, generator=g, dtype=torch.float64)
    ht = torch.randn(B, S, D, generator=g, dtype=torch.float64)
    wt = torch.randn(V, D, generator=g, dtype=torch.float64)
    mask = torch.rand(B, S, generator=g) < 0.75
    return hs, ws, ht, wt, mask


@pytest.mark.parametrize("beta,temperature", [(0.0, 1.0), (0.3, 2.0), (1.0, 1.0)])
@pytest.mark.parametrize("chunk_size,masked", [(4, True), (5, False), (1000, True)])
def test_chunked_jsd_equals_unchunked(beta, temperature, chunk_size, masked):
    hs, ws, ht, wt, mask = _hidden(seed=11)
    mask = mask if masked else None
    leaves = [x.clone().requires_grad_(True) for x in (hs, ws)]
    full = generalized_jsd(leaves[0] @ leaves[1].T, ht @ wt.T, beta, temperature, mask)
    full_grads = torch.autograd.grad(full, leaves)
    leaves = [x.clone().requires_grad_(True) for x in (hs, ws)]
    chunked = chunked_generalized_jsd(leaves[0], leaves[1], ht, wt, beta, temperature, mask,
                                      chunk_size=chunk_size)
    chunked_grads = torch.autograd.grad(chunked, leaves)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-5)
    for a, b in zip(chunked_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert full.item() > 0


def test_chunked_jsd_keeps_no_logits_for_backward():
    """Outside the per-chunk recomputation, nothing of vocabulary width (..., V) is saved for
    backward (the weights are (V, D)); without checkpointing every chunk would keep its logits."""
    hs, ws, ht, wt, mask = _hidden(seed=12)
    hs.requires_grad_(True)
    ws.requires_grad_(True)
    V = ws.shape[0]

    def saved_shapes(fn):
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(t.shape) or t,
                                                      lambda t: t):
            fn()
        return shapes

    full = saved_shapes(lambda: generalized_jsd(hs @ ws.T, ht @ wt.T, mask=mask))
    chunked = saved_shapes(lambda: chunked_generalized_jsd(hs, ws, ht, wt, mask=mask, chunk_size=4))
    assert any(shape[-1] == V for shape in full)
    assert chunked and not any(shape[-1] == V for shape in chunked)


def test_chunked_jsd_bad_arguments():
    hs, ws, ht, wt, mask = _hidden(seed=13)
    with pytest.raises(ValueError):
        chunked_generalized_jsd(hs, ws, ht, wt, chunk_size=0)
    with pytest.raises(ValueError):
        chunked_generalized_jsd(hs, ws, ht, wt[:5])
    with pytest.raises(ValueError):
        chunked_generalized_jsd(hs, ws, ht[:1], wt)
    with pytest.raises(ValueError):
        chunked_generalized_jsd(hs, ws, ht, wt, beta=-0.1)


# ----------------------------------------------------------------------------- opd_advantages
def test_opd_advantages():
    student = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.1, -4.0]], requires_grad=True)
    teacher = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, float("-inf"), -1.0]])
    mask = torch.tensor([[True, True, True], [True, False, True]])
    adv = opd_advantages(student, teacher, coef=2.0, mask=mask)
    expected = torch.tensor([[-1.0, 2.0, 0.0], [2.0, 0.0, 6.0]])
    torch.testing.assert_close(adv, expected)
    assert not adv.requires_grad
    torch.testing.assert_close(opd_advantages(student, teacher[:, :1].expand(2, 3)),
                               -(student - teacher[:, :1]).detach())
    with pytest.raises(ValueError):
        opd_advantages(student, teacher[:, :2])
    with pytest.raises(ValueError):
        opd_advantages(student, teacher, mask=mask[:, :2])


@pytest.mark.parametrize("importance", ["token", "sequence"])
def test_minus_inf_outside_the_mask_leaves_loss_and_gradient_finite(importance):
    # a tool result's video placeholders are suppressed tokens: log-prob -inf, masked out
    logits = torch.randn(2, 5, 7, requires_grad=True)
    suppressed = logits.detach().clone()
    suppressed[..., 0] = float("-inf")
    ids = torch.tensor([[1, 2, 0, 0, 3], [4, 0, 5, 6, 1]])
    mask = ids != 0
    logp = torch.log_softmax(logits + (suppressed - logits.detach()), -1).gather(-1, ids[..., None])[..., 0]
    old = logp.detach()
    loss, _ = policy_loss(logp, old, torch.tensor([1.0, -0.5]), mask, loss_type="dapo",
                          importance=importance, ref_logp=old - 0.1, kl_coef=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
