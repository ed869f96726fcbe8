"""LA-DAPO, Future-L1's latent-aware RL: the `rl` stage of `FutureLatentModule`, on the RL engine
(`framelab.lightning_modules.policy`, `framelab.rl`).

One step (the policy stage's loop, with these parts replaced):
1. **Roll out** G replies per question with the latent spans of
   `framelab.models.latent.LatentSpans` (the inference budget): the rollout records, per sample,
   which completion slots are text, latent or a forced span end, the latents fed (z) and their
   means (mu: equal to z with deterministic latents, the released default; `latent.sample=true`
   draws z ~ vMF around mu, concentration kappa |mu|^2, so that kappa <mu, z> is the log-density
   of what was sampled). `<|latent_pad|>` is never sampled as text.
2. **Reward** (`module.rewards`), per reply:
   accuracy x [the answer after the span is right] + format x [one span, closed, then the world's
   reply shape] - length x max(0, len - ref_len) + ctr x R_ctr + div x R_div; len counts every
   completion slot, ref_len is `rewards.ref_len` or, null, the reference reply's length plus the
   training span (budget + 2). R_ctr and R_div: `framelab.rl.latent`. Groups whose accuracy lies
   outside [rl.acc_low, rl.acc_high] are dropped by DAPO's dynamic sampling.
3. **Update**: the text tokens (sampled slots outside spans, a sampled `<|latent_end|>` included)
   through `policy_loss` (DAPO: clip 0.2 / 0.28, token mean, dual clip, k3 KL to the starting
   policy on text tokens only), plus alpha x the clipped PPO surrogate on latent steps whose
   log-probability is vMF's kappa <mu, z> (`latent.kappa`, `latent.clip`, `latent.alpha`); mu is
   the latent the updated model predicts at the slot before z, teacher-forced with the rollout's
   latents in the span, and the behaviour log-prob uses the rollout's mu.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from framelab.datamodules.special_tokens import LATENT_END, LATENT_PAD, LATENT_START, THINK, THINK_END
from framelab.errors import UserError
from framelab.models.latent import TEXT, latent_hidden_states, latent_of
from framelab.rl.latent import (contrastive_reward, diversity_reward, latent_policy_loss,
                                length_penalty, vmf_logprob)
from framelab.rl.logprobs import pack, token_logprobs
from framelab.rl.rewards import accuracy_reward, world_format
from framelab.rl.rollout import Rollout, rollout

REWARD_DEFAULTS = {"accuracy": 0.9, "format": 0.1, "length": 0.001, "ref_len": None,
                   "ctr": 1.0, "div": 0.0, "tau": 0.5}
TERMS = ("accuracy", "format", "length", "ctr", "div")


def reward_config(rewards: dict | None) -> dict:
    given = dict(rewards or {})
    unknown = sorted(set(given) - set(REWARD_DEFAULTS))
    if unknown:
        raise UserError(f"module.rewards has unknown keys {unknown}; valid: "
                        f"{', '.join(REWARD_DEFAULTS)}")
    cfg = {**REWARD_DEFAULTS, **given}
    if float(cfg["tau"]) <= 0:
        raise UserError(f"module.rewards.tau={cfg['tau']}: expected a positive temperature "
                        "(released: 0.5)")
    return cfg


class LatentPolicy:
    """Mixin for `FutureLatentModule` (see the module docstring); placed before `PolicyStages`."""

    def init_latent_policy(self, rewards: dict | None) -> None:
        self.reward_cfg = reward_config(rewards)
        if self.stage == "rl":                  # what policy_update logs as reward/<name>
            self.rewards = SimpleNamespace(names=list(TERMS))

    # ---- rollouts and rewards ---------------------------------------------------------------
    def roll_and_score(self, docs: list[dict]) -> Rollout:
        cfg, g = self.rl_cfg, int(self.rl_cfg["group_size"])
        spans = self.spans(len(docs) * g, sample=True)
        was = self.model.training
        self.model.eval()
        ro = rollout(self.model, [d["prompt"] for d in docs], [d["videos"] for d in docs], g,
                     max_new_tokens=self.reply_budget(), temperature=float(cfg["temperature"]),
                     top_k=cfg["top_k"], top_p=cfg["top_p"], stop_tokens=self.stop_tokens(),
                     generator=self.generator(), max_total=cfg["max_total"], step_hook=spans,
                     suppress_tokens=self.suppressed())
        self.model.train(was)
        rows = spans.rows([len(c) for c in ro.completions]) if spans is not None else None
        if rows is not None:
            ro.loss_mask = [[k == TEXT for k in r["kinds"]] for r in rows]
        ro.extra["z"] = [r["z"] for r in rows] if rows else [None] * len(ro)
        ro.extra["mu"] = [r["mu"] for r in rows] if rows else [None] * len(ro)
        ro.extra["doc"] = [docs[k] for k in ro.group]
        ro.extra["text"] = [self.decode_text(self.answer_ids(c)) for c in ro.completions]
        terms = self.reward_terms(ro)
        w = self.reward_cfg
        total = [w["accuracy"] * a + w["format"] * f - w["length"] * n + w["ctr"] * c + w["div"] * d
                 for a, f, n, c, d in zip(*(terms[t] for t in TERMS))]
        ro.extra["reward"] = total
        for name in TERMS:
            ro.extra[f"term/{name}"] = terms[name]
        return ro

    def reward_terms(self, ro: Rollout) -> dict[str, list[float]]:
        metas = [d["meta"] for d in ro.extra["doc"]]
        acc = [accuracy_reward(t, m) for t, m in zip(ro.extra["text"], metas)]
        fmt = [float(self.well_formed(c) and world_format(t, m))
               for c, t, m in zip(ro.completions, ro.extra["text"], metas)]
        span = int(self.latent_cfg["budget"]) + 2 if self.mode == "latent" else 0
        refs = [int(self.reward_cfg["ref_len"]) if self.reward_cfg["ref_len"] is not None
                else len(d["reference"]) + span for d in ro.extra["doc"]]
        over = length_penalty([len(c) for c in ro.completions], refs)
        zs = ro.extra["z"]
        ctr = (contrastive_reward(zs, [a >= 1.0 for a in acc], ro.group_size,
                                  float(self.reward_cfg["tau"]))
               if self.reward_cfg["ctr"] and self.mode == "latent" else [0.0] * len(ro))
        div = ([diversity_reward(z) for z in zs] if self.reward_cfg["div"] else [0.0] * len(ro))
        return {"accuracy": acc, "format": fmt, "length": over, "ctr": ctr, "div": div}

    def well_formed(self, ids: list[int]) -> bool:
        """The reply opens with this mode's span (latent, or <think> for text), closed once."""
        t = self.tokens
        opens, closes = {"latent": (t[LATENT_START], t[LATENT_END]),
                         "text": (t[THINK], t[THINK_END])}.get(self.mode, (None, None))
        if opens is None:
            return True
        return bool(ids) and ids[0] == opens and ids.count(opens) == 1 and ids.count(closes) == 1

    # ---- scoring and the loss ---------------------------------------------------------------
    def score_chunk(self, part: Rollout, prompts=None, with_grad: bool = True, model=None,
                    entropy: bool = False, videos=None) -> dict:
        """Text log-probs of `part`'s completions and the latents predicted at their slots, under
        `model` (the policy), teacher-forced with the rollout's latents in the spans."""
        model = model if model is not None else self.model
        packed = pack(prompts or part.prompts, part.completions,
                      videos if videos is not None else part.videos, self.device, self.pad_id())
        zs = [z for z in part.extra.get("z", []) if z is not None and len(z)]
        latents = torch.cat(zs).to(self.device) if zs else None
        pad = self.tokens[LATENT_PAD]
        with torch.set_grad_enabled(with_grad):
            hidden = latent_hidden_states(model, packed.input_ids, packed.videos or None, None,
                                          pad, latents)
            flat = hidden.reshape(-1, hidden.shape[-1])
            logp, ent = token_logprobs(flat[packed.predict_at], model.lm.output_weight, packed,
                                       float(self.rl_cfg["temperature"]), entropy=entropy,
                                       suppress_tokens=self.suppressed())
            # latent slots score the suppressed <|latent_pad|> (-inf); they carry no text loss
            logp = logp.masked_fill(~torch.isfinite(logp), 0.0)
            slots = (packed.input_ids == pad).flatten().nonzero().flatten()
            mu = latent_of(model, flat[slots - 1]) if len(slots) else flat[:0]
        return {"logp": logp, "entropy": ent, "hidden": flat[packed.predict_at],
                "packed": packed, "mu": mu, "z": latents}

    def chunk_loss(self, part: Rollout, adv, old_logp):
        lat = self.latent_cfg
        cur, mask, old, ref = self.chunk_scores(part, old_logp)
        packed = cur["packed"]
        loss, stats = self.clipped_loss(cur, old, adv, mask, ref)
        if cur["z"] is not None:
            counts = [0 if z is None else len(z) for z in part.extra["z"]]
            steps_adv = torch.repeat_interleave(adv, torch.tensor(counts, device=adv.device))
            mu_old = torch.cat([m for m in part.extra["mu"] if m is not None and len(m)])
            kappa, unit = float(lat["kappa"]), bool(lat["normalize"])
            lp = vmf_logprob(cur["mu"], cur["z"], kappa, unit)
            old_lp = vmf_logprob(mu_old.to(cur["z"]), cur["z"], kappa, unit)
            lloss, lstats = latent_policy_loss(lp, old_lp, steps_adv, float(lat["clip"]))
            loss = loss + float(lat["alpha"]) * lloss
            stats.update({k: float(v) for k, v in lstats.items()})
            stats["latent_loss"] = float(lloss.detach())
            stats["latent_steps"] = float(sum(counts)) / max(len(counts), 1)
        behaviour = packed.padded(torch.tensor([x for lp in part.logprobs for x in lp],
                                               device=old.device))
        stats["behaviour_logp_diff"] = (old - behaviour).abs()[mask].mean().item() \
            if bool(mask.any()) else 0.0
        return loss, stats
