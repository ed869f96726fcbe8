"""The policy stages shared by framelab's LightningModules: `rl` (GRPO / DAPO family, rule-based
rewards) and `opd` (on-policy distillation from a teacher), over the RL engine in `framelab.rl`.

A module mixes in `PolicyStages` and provides `prompt_documents(batch)` (dicts with "prompt" ids,
"videos", the question's "meta" and the "reference" reply ids), `decode_text(ids)`,
`stop_tokens()` (the end-of-turn id first), `pad_id()` and a `tokenizer` attribute; its model has
`MultimodalLM`'s interface. A module may override `teacher_input(doc, videos)` to give the teacher
another prompt and other frames (ViCuR's privileged cues). One training step, under manual
optimisation:

1. **Roll out** (`framelab.rl.rollout`): G samples for each of `rl.prompts` prompts of the batch,
   with the KV cache, from the step's saved generator. `rl.dynamic_sampling` (DAPO) drops groups
   whose rewards are all equal (and, with `rl.acc_low` / `rl.acc_high`, groups whose accuracy lies
   outside them) and rolls out more of the batch's prompts, at most `rl.max_rounds` rounds.
2. **Score**: `rl` computes the rewards (`framelab.rl.rewards`, `rl.rewards` = {name: weight or
   {weight, params}}) and group advantages (`rl.scale`); `opd` has the teacher score the student's
   tokens under the teacher's prompt (`opd.teacher_prompt`: `same`, or `answer`: the reference
   reply written into the question; `opd.teacher` null: the frozen starting policy, i.e.
   self-distillation from a privileged prompt) -- `opd.form=pg`: per-token advantages -coef (log p_s - log p_t)
   through the clipped policy loss (the released OPD form; `opd.logp_floor` and `opd.kl_clamp`
   clamp the log-probs and the per-token log-ratio as ViCuR's release does, null: no clamp);
   `opd.form=gjsd`: the generalized JSD (`opd.beta`; 1 = reverse KL) on the student's samples
   (GKD with on-policy data). In `rl` a module may add per-token terms to the advantages by
   overriding `token_bonus(rollout)` (the agent's credit for its verdicts).
3. **Update**: `rl.epochs` passes over `rl.minibatches` minibatches of whole groups, one optimiser
   step each, the behaviour log-probs held fixed (with one pass and one minibatch they are the
   current log-probs, detached: the ratio is 1 and the gradient is the policy gradient).
   `policy_loss` with `rl.loss_type`, clips, `rl.dual_clip`, `rl.importance`, and `rl.kl_coef` to a
   frozen copy of the starting policy (made when `rl.kl_coef` > 0 or `rl.reference`).

Exact resume: the sampling generator (seeded from the run's seed and the rank) is saved in every
checkpoint, so a resumed run draws the rollouts the uninterrupted run drew. Under DDP each rank
rolls out its own prompts; groups, and so advantages, never cross ranks.
"""
from __future__ import annotations

import copy
import time

import torch

from framelab import checkpoints
from framelab.errors import UserError
from framelab.evaluation.video_qa import data_parallel
from framelab.rl.logprobs import completion_hidden, pack, token_logprobs
from framelab.rl.losses import chunked_generalized_jsd, group_advantages, opd_advantages, policy_loss
from framelab.rl.rewards import build_rewards
from framelab.rl.rollout import Rollout, rollout, suppressed
from framelab.rl.sampling import collect, informative_groups

POLICY_STAGES = ("rl", "opd")
GENERATOR_KEY = "framelab_rl_generator"
RL_DEFAULTS = {
    "prompts": 16, "group_size": 8, "max_new_tokens": 24, "temperature": 1.0, "top_k": None,
    "top_p": None, "max_turns": 1, "max_total": 4096,
    "rewards": {"accuracy": 1.0, "format": 0.1}, "scale": "group",
    "loss_type": "dapo", "clip_low": 0.2, "clip_high": 0.28, "dual_clip": None,
    "importance": "token", "kl_coef": 0.0, "reference": False,
    "epochs": 1, "minibatches": 1, "max_grad_norm": 1.0,
    "dynamic_sampling": False, "acc_low": None, "acc_high": None, "max_rounds": 3,
    "log_rollouts": 4,
}
OPD_DEFAULTS = {"teacher": None,  # None: the frozen starting policy (self-distillation)
                 "form": "pg", "beta": 1.0, "coef": 1.0, "teacher_prompt": "same",
                 "logp_floor": None, "kl_clamp": None}
TEACHER_PROMPTS = ("same", "answer")


def policy_config(rl: dict | None, opd: dict | None) -> tuple[dict, dict]:
    """The `module.rl` and `module.opd` settings over their defaults; bad keys are one line."""
    out = []
    for name, given, defaults in (("rl", rl, RL_DEFAULTS), ("opd", opd, OPD_DEFAULTS)):
        given = dict(given or {})
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise UserError(f"module.{name} has unknown keys {unknown}; valid: {', '.join(defaults)}")
        out.append({**defaults, **given})
    rl, opd = out
    for key in ("prompts", "group_size", "max_new_tokens", "max_turns", "epochs", "minibatches",
                "max_rounds"):
        if int(rl[key]) < 1:
            raise UserError(f"module.rl.{key}={rl[key]}: expected an integer of at least 1")
    if opd["form"] not in ("pg", "gjsd"):
        raise UserError(f"module.opd.form={opd['form']!r}; choose pg (per-token advantages) or "
                        "gjsd (generalized JSD)")
    if opd["teacher_prompt"] not in TEACHER_PROMPTS:
        raise UserError(f"module.opd.teacher_prompt={opd['teacher_prompt']!r}; choose one of "
                        f"{', '.join(TEACHER_PROMPTS)}")
    for key, sign in (("logp_floor", -1), ("kl_clamp", 1)):
        if opd[key] is not None and not float(opd[key]) * sign > 0:
            side = "negative" if sign < 0 else "positive"
            raise UserError(f"module.opd.{key}={opd[key]}: expected a {side} number (ViCuR's "
                            "release: -10 and 10) or null for none")
    return rl, opd


class PolicyStages:
    """Mixin for a `FramelabModule` (see the module docstring)."""

    def init_policy(self, stage: str, rl: dict | None, opd: dict | None) -> None:
        self.rl_cfg, self.opd_cfg = policy_config(rl, opd)
        if stage in POLICY_STAGES:
            self.automatic_optimization = False
        self.rewards = build_rewards(self.rl_cfg["rewards"], where="module.rl.rewards") if stage in POLICY_STAGES else None
        self._frozen: dict[str, torch.nn.Module] = {}     # reference, teacher: not submodules
        self._generator: torch.Generator | None = None
        self._generator_state: torch.Tensor | None = None

    # ---- frozen models and the generator ---------------------------------------------------
    def frozen(self, name: str):
        """The frozen reference policy or teacher, built on first use, on this module's device."""
        if name not in self._frozen:
            if name == "reference" or not self.opd_cfg["teacher"]:   # no teacher: self-distil
                model = copy.deepcopy(self.model)
            else:
                model = self.load_teacher(self.opd_cfg["teacher"])
            self._frozen[name] = model.requires_grad_(False).eval()
        return self._frozen[name].to(self.device)

    def load_teacher(self, path: str):
        source = checkpoints.read_weights(path, "module.opd.teacher")
        theirs, mine = dict(source["spec"].get("tokens") or {}), dict(self.model_spec["tokens"])
        if any(theirs[k] != mine[k] for k in set(theirs) & set(mine)) or \
                source["spec"]["config"].get("vocab_size") != self.model_spec["config"]["vocab_size"]:
            raise UserError(f"module.opd.teacher={path}: its tokenizer ids or vocabulary differ from "
                            "the student's; distil from a teacher trained on the same data")
        model = self.build_model(source["spec"])
        checkpoints.load_weights(model, source, None, f"module.opd.teacher={path}")
        return model

    def generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=self.device)
            self._generator.manual_seed((torch.initial_seed() * 1009 + self.global_rank) % 2**63)
            if self._generator_state is not None:
                self._generator.set_state(self._generator_state)
        return self._generator

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The sampling generator's state goes into every checkpoint of a policy stage (exact
        resume); a cooperative hook: the module's other bases save theirs first."""
        super().on_save_checkpoint(checkpoint)
        if self.stage in POLICY_STAGES:
            checkpoint[GENERATOR_KEY] = self.generator().get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if GENERATOR_KEY in checkpoint:
            self._generator_state = checkpoint[GENERATOR_KEY]
            self._generator = None

    # ---- one step ---------------------------------------------------------------------------
    def policy_training_step(self, batch, batch_idx):
        cfg, t0 = self.rl_cfg, time.perf_counter()
        docs = self.prompt_documents(batch)
        if not docs:
            return None
        g = int(cfg["group_size"])
        keep = None
        if self.stage == "rl" and cfg["dynamic_sampling"]:
            keep = lambda r: informative_groups(  # noqa: E731
                torch.tensor(r.extra["reward"]), g, cfg["acc_low"], cfg["acc_high"],
                torch.tensor(r.extra["term/accuracy"]) if "term/accuracy" in r.extra else None)
        ro, stats = collect(self.roll_and_score, docs, int(cfg["prompts"]), int(cfg["max_rounds"]),
                            keep)
        t_roll = time.perf_counter() - t0
        if ro is None:                                   # every group was dropped
            self.log_stats({**stats, "rollout_s": t_roll}, prefix="train/rl")
            return None
        t1 = time.perf_counter()
        losses = self.policy_update(ro)
        t_update = time.perf_counter() - t1
        n_tok = sum(ro.lengths)
        self.log_stats({**stats, **losses, "rollout_s": t_roll, "update_s": t_update,
                        "rollout_tokens_per_s": n_tok / max(t_roll, 1e-9),
                        "update_tokens_per_s": n_tok * cfg["epochs"] / max(t_update, 1e-9)},
                       prefix="train/rl")
        if batch_idx % max(1, self.trainer.log_every_n_steps) == 0:
            self.log_rollouts(ro)
        return None

    def roll_and_score(self, docs: list[dict]) -> Rollout:
        """Roll out G samples per document; attach rewards and their terms as `extra` lists."""
        cfg = self.rl_cfg
        was_training = self.model.training
        self.model.eval()
        ro = rollout(self.model, [d["prompt"] for d in docs], [d["videos"] for d in docs],
                     int(cfg["group_size"]), max_new_tokens=int(cfg["max_new_tokens"]),
                     temperature=float(cfg["temperature"]), top_k=cfg["top_k"], top_p=cfg["top_p"],
                     stop_tokens=self.stop_tokens(), generator=self.generator(),
                     max_turns=int(cfg["max_turns"]), max_total=cfg["max_total"])
        self.model.train(was_training)
        ro.extra["doc"] = [docs[k] for k in ro.group]
        ro.extra["text"] = [self.decode_text(c) for c in ro.completions]
        metas = [d["meta"] for d in ro.extra["doc"]]
        total, terms = self.rewards(ro.extra["text"], metas, ro.lengths)
        ro.extra["reward"] = total.tolist()
        for name, values in terms.items():
            ro.extra[f"term/{name}"] = values.tolist()
        return ro

    def policy_update(self, ro: Rollout) -> dict:
        """Advantages, then `epochs` x `minibatches` optimiser steps; returns stats to log."""
        cfg, g = self.rl_cfg, ro.group_size
        device = self.device
        rewards = torch.tensor(ro.extra["reward"], device=device)
        out = {"reward_mean": rewards.mean().item(), "reward_std": rewards.std().item()
               if len(rewards) > 1 else 0.0,
               "zero_variance_groups": (~informative_groups(rewards, g)).float().mean().item(),
               "response_length": sum(ro.lengths) / len(ro),
               "truncated": sum(ro.truncated) / len(ro)}
        for name in self.rewards.names:
            out[f"reward/{name}"] = sum(ro.extra[f"term/{name}"]) / len(ro)
        adv = group_advantages(rewards, g, cfg["scale"]) if self.stage == "rl" else None
        bonus = self.token_bonus(ro) if adv is not None else None
        if bonus is not None:
            ro.extra["token_bonus"] = bonus
        groups = list(range(len(ro) // g))
        chunks = [groups[i::int(cfg["minibatches"])] for i in range(int(cfg["minibatches"]))]
        chunks = [c for c in chunks if c]
        fixed = cfg["epochs"] * len(chunks) > 1     # several steps: behaviour log-probs up front
        old = {tuple(c): self.score_chunk(ro.select(c), None, with_grad=False)["logp"]
               for c in chunks} if fixed else {}
        opt, sched = self.optimizers(), self.lr_schedulers()
        for _ in range(int(cfg["epochs"])):
            for c in chunks:
                part = ro.select(c)
                part_adv = adv.reshape(-1, g)[c].flatten() if adv is not None else None
                loss, stats = self.chunk_loss(part, part_adv, old.get(tuple(c)))
                if data_parallel():   # parts the replies never reach (the vision tower on text
                    # prompts) still owe DDP's reducer a (zero) gradient
                    loss = loss + 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)
                opt.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                if cfg["max_grad_norm"]:
                    norm = torch.nn.utils.clip_grad_norm_(
                        [p for p in self.parameters() if p.requires_grad], float(cfg["max_grad_norm"]))
                    stats["grad_norm"] = float(norm)
                opt.step()
                if sched is not None:
                    sched.step()
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/lr", opt.param_groups[0]["lr"])
        return {**out, **stats}

    def score_chunk(self, part: Rollout, prompts=None, with_grad: bool = True, model=None,
                    entropy: bool = False, videos=None) -> dict:
        """Log-probs (and hidden states) of `part`'s completions under `model` (the policy), after
        `prompts` and `videos` (None: the rollout's own)."""
        model = model if model is not None else self.model
        packed = pack(prompts or part.prompts, part.completions,
                      videos if videos is not None else part.videos, self.device, self.pad_id())
        with torch.set_grad_enabled(with_grad):
            hidden = completion_hidden(model, packed)
            logp, ent = token_logprobs(hidden, model.lm.output_weight, packed,
                                       float(self.rl_cfg["temperature"]), entropy=entropy,
                                       suppress_tokens=suppressed(model))
        return {"logp": logp, "entropy": ent, "hidden": hidden, "packed": packed}

    def chunk_scores(self, part: Rollout, old_logp):
        """(current scores with entropy, loss mask, behaviour log-probs, reference log-probs or
        None) of a chunk: what every chunk loss starts from."""
        cur = self.score_chunk(part, entropy=True)
        packed = cur["packed"]                   # loss on sampled tokens only, not tool results
        mask = packed.padded(torch.tensor([m for ms in part.loss_mask for m in ms],
                                          device=packed.mask.device))
        old = old_logp if old_logp is not None else cur["logp"].detach()
        ref = None
        if self.rl_cfg["kl_coef"] > 0 or self.rl_cfg["reference"]:
            ref = self.score_chunk(part, with_grad=False, model=self.frozen("reference"))["logp"]
        return cur, mask, old, ref

    def clipped_loss(self, cur: dict, old, adv, mask, ref) -> tuple[torch.Tensor, dict]:
        """The engine's clipped policy loss (+ KL) of the current scores under `module.rl`."""
        cfg = self.rl_cfg
        loss, stats = policy_loss(cur["logp"], old, adv, mask, loss_type=cfg["loss_type"],
                                  clip_low=cfg["clip_low"], clip_high=cfg["clip_high"],
                                  dual_clip=cfg["dual_clip"], importance=cfg["importance"],
                                  ref_logp=ref, kl_coef=float(cfg["kl_coef"]),
                                  entropy=cur["entropy"])
        return loss, {k: float(v) for k, v in stats.items()}

    def chunk_loss(self, part: Rollout, adv, old_logp):
        cfg = self.rl_cfg
        cur, mask, old, ref = self.chunk_scores(part, old_logp)
        packed = cur["packed"]
        if self.stage == "opd":
            teacher = self.frozen("teacher")
            inputs = [self.teacher_input(d, v) for d, v in zip(part.extra["doc"], part.videos)]
            t = self.score_chunk(part, [p for p, _ in inputs], with_grad=False, model=teacher,
                                 videos=[v for _, v in inputs])
            if self.opd_cfg["form"] == "gjsd":
                loss = chunked_generalized_jsd(
                    cur["hidden"], self.model.lm.output_weight, t["hidden"],
                    teacher.lm.output_weight, beta=float(self.opd_cfg["beta"]),
                    temperature=float(cfg["temperature"]), mask=mask[packed.mask])
                kl = (old - t["logp"])[mask].mean()
                return loss, {"gjsd": loss.item(), "teacher_kl": kl.item()}
            adv = opd_advantages(old, t["logp"], float(self.opd_cfg["coef"]), mask,
                                 clamp=self.opd_cfg["kl_clamp"],
                                 logp_floor=self.opd_cfg["logp_floor"])
            teacher_kl = (old - t["logp"])[mask].mean().item()
        if adv is not None and "token_bonus" in part.extra:       # (B,) -> (B, T)
            flat = [x for b in part.extra["token_bonus"] for x in b]
            adv = adv.unsqueeze(1) + packed.padded(torch.tensor(flat, device=old.device,
                                                                dtype=old.dtype))
        loss, stats = self.clipped_loss(cur, old, adv, mask, ref)
        # the rollout's log-probs against the update's (verl's rollout_probs_diff): a mismatch
        # between generation and training numerics shows here
        behaviour = packed.padded(torch.tensor([x for lp in part.logprobs for x in lp],
                                               device=old.device))
        stats["behaviour_logp_diff"] = (old - behaviour).abs()[mask].mean().item()
        if self.stage == "opd":
            stats["teacher_kl"] = teacher_kl
        return loss, stats

    def token_bonus(self, ro: Rollout) -> list[list[float]] | None:
        """Per-token terms a module adds to the `rl` stage's advantages (one list per completion,
        one value per completion token), or None: the episode's advantage on every token."""
        return None

    # ---- the teacher's input ----------------------------------------------------------------
    def teacher_input(self, doc: dict, videos: list) -> tuple[list[int], list]:
        """The teacher's prompt ids and videos for a document whose rollout saw `videos`."""
        return self.teacher_prompt(doc), videos

    def teacher_prompt(self, doc: dict) -> list[int]:
        """The student's prompt (`opd.teacher_prompt=same`), or with the reference reply written at
        the end of the question (`answer`)."""
        if self.opd_cfg["teacher_prompt"] == "same":
            return doc["prompt"]
        return self.answer_prompt(doc, "module.opd.teacher_prompt=answer")

    def answer_prompt(self, doc: dict, what: str) -> list[int]:
        """The document's prompt with " Reference answer: <reply>" at the end of the question."""
        return self.privileged_prompt(
            doc["prompt"], f" Reference answer: {self.decode_text(doc['reference'])}", what)

    def privileged_prompt(self, prompt: list[int], text: str, what: str) -> list[int]:
        """`prompt` with `text` written at the end of its last user turn (before the turn's end
        token): a privileged context only the teacher reads."""
        if getattr(self, "tokenizer", None) is None:
            raise UserError(f"{what} needs the datamodule's tokenizer")
        hint = self.tokenizer.encode(text, add_special_tokens=False).ids
        end_of_turn = self.stop_tokens()[0]
        end = max(i for i, t in enumerate(prompt) if t == end_of_turn)
        return prompt[:end] + hint + prompt[end:]

    # ---- logging ----------------------------------------------------------------------------
    def log_stats(self, stats: dict, prefix: str) -> None:
        for name, value in stats.items():
            self.log(f"{prefix}/{name}", float(value))

    def log_rollouts(self, ro: Rollout) -> None:
        logger, n = self.logger, int(self.rl_cfg["log_rollouts"])
        if n <= 0 or logger is None or not hasattr(logger.experiment, "add_text"):
            return
        lines = []
        for i in range(min(n, len(ro))):
            doc = ro.extra["doc"][i]
            lines.append(f"**prompt** {self.decode_text(doc['prompt'][-48:])}  \n"
                         f"**reply** {ro.extra['text'][i]}  \n**reward** {ro.extra['reward'][i]:.3f}"
                         f"  \n**answer** {doc['meta'].get('answer_text', doc['meta'].get('answer'))}")
        logger.experiment.add_text("train/rollouts", "\n\n".join(lines), self.global_step)
