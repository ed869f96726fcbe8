"""The engine learns: rollouts -> rewards -> group advantages -> DAPO loss on a small multimodal
LM raises a rule-based reward from chance; on-policy distillation's per-token advantages follow
the gradient of the reverse KL to the teacher."""
import copy

import torch

from framelab.models import MultimodalLM, preset
from framelab.rl.logprobs import completion_hidden, pack, token_logprobs
from framelab.rl.losses import group_advantages, opd_advantages, policy_loss
from framelab.rl.rollout import rollout, suppressed

VID, LOW = 500, 32            # reward: the share of completion tokens below LOW (chance ~6 %)


def model(seed):
    torch.manual_seed(seed)
    cfg = preset("tiny", vision={"width": 32, "depth": 1, "heads": 2, "patch_size": 8})
    return MultimodalLM(cfg, video_token_id=VID)


def prompts(step):
    g = torch.Generator().manual_seed(step)
    return [torch.randint(100, 400, (6,), generator=g).tolist() for _ in range(4)]


def logp_of(m, ro, grad=True):
    packed = pack(ro.prompts, ro.completions, ro.videos, "cpu")
    with torch.set_grad_enabled(grad):
        logp, _ = token_logprobs(completion_hidden(m, packed), m.lm.output_weight, packed,
                                 suppress_tokens=suppressed(m))
    return logp, packed.mask


def test_dapo_raises_a_rule_based_reward():
    m = model(0)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    means = []
    for step in range(30):
        m.eval()
        ro = rollout(m, prompts(step), None, 8, max_new_tokens=4, generator=gen)
        m.train()
        reward = torch.tensor([sum(t < LOW for t in c) / len(c) for c in ro.completions])
        means.append(reward.mean().item())
        logp, mask = logp_of(m, ro)
        loss, _ = policy_loss(logp, logp.detach(), group_advantages(reward, 8), mask,
                              loss_type="dapo", clip_low=0.2, clip_high=0.28)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sum(means[:5]) / 5 < 0.15, means
    assert sum(means[-5:]) / 5 > 0.5, means


def test_opd_advantages_estimate_the_reverse_kl_gradient():
    """The per-token OPD advantage -(log p_s - log p_t) through the policy loss is a one-sample
    estimate of the gradient of KL(student || teacher) at the visited positions: with more samples
    its direction converges to the exact gradient (summed over the vocabulary)."""
    teacher = model(1).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():                      # a student that disagrees with its teacher
        for p in student.lm.parameters():
            p.add_(0.3 * p.std() * torch.randn_like(p))
    params = list(student.lm.parameters())
    cosines = []
    for g in (4, 64):
        ro = rollout(student, prompts(7), None, g, max_new_tokens=6,
                     generator=torch.Generator().manual_seed(1))
        logp, mask = logp_of(student, ro)
        t_logp, _ = logp_of(teacher, ro, grad=False)
        loss, _ = policy_loss(logp, logp.detach(), opd_advantages(logp.detach(), t_logp, 1.0, mask),
                              mask, loss_type="dapo")
        sampled = torch.cat([x.flatten() for x in torch.autograd.grad(loss, params)])
        packed = pack(ro.prompts, ro.completions, ro.videos, "cpu")
        s = torch.log_softmax(completion_hidden(student, packed) @ student.lm.output_weight.T, -1)
        with torch.no_grad():
            t = torch.log_softmax(completion_hidden(teacher, packed) @ teacher.lm.output_weight.T, -1)
        kl = (s.exp() * (s - t)).sum(-1).mean()
        exact = torch.cat([x.flatten() for x in torch.autograd.grad(kl, params)])
        cosines.append(float(sampled @ exact / (sampled.norm() * exact.norm())))
    assert cosines[1] > 0.4 and cosines[1] > cosines[0] + 0.2, cosines
