"""LA-DAPO's latent pieces equal hand-written references: the vMF log-prob, the clipped latent
surrogate, R_ctr (InfoNCE over latent trajectories), R_div and the length penalty."""
import math

import torch

from framelab.rl.latent import (contrastive_reward, diversity_reward, latent_policy_loss,
                                length_penalty, vmf_logprob)


def test_vmf_logprob():
    mu, z = torch.tensor([[1.0, 2.0, -1.0]]), torch.tensor([[0.5, -1.0, 3.0]])
    assert math.isclose(float(vmf_logprob(mu, z, 0.01)[0]), 0.01 * (0.5 - 2.0 - 3.0), rel_tol=1e-6)
    cos = (0.5 - 2.0 - 3.0) / (math.sqrt(6) * math.sqrt(10.25))
    assert math.isclose(float(vmf_logprob(mu, z, 2.0, normalize=True)[0]), 2 * cos, rel_tol=1e-6)


def test_latent_policy_loss_matches_a_loop():
    logp = torch.tensor([0.3, -0.2, 0.05, 0.0], requires_grad=True)
    old = torch.tensor([0.0, 0.0, 0.0, 0.0])
    adv = torch.tensor([1.0, 1.0, -2.0, 0.5])
    loss, stats = latent_policy_loss(logp, old, adv, clip=0.1)
    want = 0.0
    for lp, o, a in zip(logp.tolist(), old.tolist(), adv.tolist()):
        r = math.exp(lp - o)
        want += -min(r * a, min(max(r, 0.9), 1.1) * a)
    assert math.isclose(float(loss.detach()), want / 4, rel_tol=1e-6)
    loss.backward()
    # the clipped entries (r > 1.1 with A > 0) carry no gradient; the others -A r / n
    assert logp.grad[0] == 0 and math.isclose(float(logp.grad[1]), -math.exp(-0.2) / 4, rel_tol=1e-5)
    assert float(stats["latent_clip_frac"]) == 0.25


def test_contrastive_and_diversity_rewards():
    e = torch.eye(3)
    a, b, c = e[[0, 1]], e[[0, 2]], -e[[0, 1]]
    latents = [a, b, c, None]                 # one group of 4: correct, correct, wrong, wrong
    correct = [True, True, False, False]
    got = contrastive_reward(latents, correct, 4, tau=0.5)
    s_ab = ((1 + 1) / 2 + (1 + 0) / 2) / 2            # step 0 identical, step 1 orthogonal
    s_ac = ((1 - 1) / 2 + (1 - 1) / 2) / 2            # opposite
    want = math.exp(s_ab / 0.5) / (math.exp(s_ab / 0.5) + math.exp(s_ac / 0.5) + math.exp(0.0))
    assert math.isclose(got[0], want, rel_tol=1e-6)
    assert got[2] == 0.0 and got[3] == 0.0
    assert contrastive_reward([a, b], [True, False], 2) == [0.0, 0.0]   # alone: nothing to match
    assert contrastive_reward([a, b], [True, True], 2)[0] == 1.0        # no negatives
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert math.isclose(diversity_reward(z), -(0.5 + 0.5) / 2, rel_tol=1e-6)
    assert diversity_reward(z[:1]) == 0.0
    assert length_penalty([10, 30], [20, 20]) == [0.0, 10.0]
