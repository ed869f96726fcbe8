"""AgentModule: the MCR video agent (framelab.agent) trained as a policy over `MultimodalLM`.

- stage `sft`: next-token loss on the model's own tokens of expert trajectories
  (`framelab.agent.data`): reasoning and tool calls, never observations or tool results.
- stage `rl`: agentic RL on the RL engine (`PolicyStages`, docs/rl.md). Each rollout is the
  agent's episode decoded with the KV cache: at every `</tool_call>` the engine calls
  `rollout_tool`, which runs the call against the episode's video and appends the result (text
  and frames) with loss mask 0; the turn before the last ends its result with `<tool_call>finish(` (forced finish,
  masked too); the policy loss zeroes the log-probs outside the loss mask (a result's
  video placeholders are suppressed, log-prob -inf) before it uses them. The search
  index of a video is built once and shared by its G samples. Rewards:
  `module.rl.rewards`, by default `agent_answer` (letter accuracy, temporal IoU for "when") and
  `agent_turns` at a small weight (a cost per tool call), and with check notes optionally
  `agent_checks`, a process reward on their verdicts (`framelab.agent.rewards`). With
  `agent.guide`, each group's last sample is the expert's episode on the real tools when it
  finds the needle (`framelab.agent.guide`), scored under the current policy.

Validation (and `framelab test`) runs the agent greedily on up to `agent.val_episodes` episodes:
`val/agent/accuracy` (multiple choice), `val/agent/tiou` ("when"), `val/agent/score` (either, per
question), `val/agent/turns`, and `val/loss` of the expert trajectories.

`init_from` takes a `VideoLLMModule` checkpoint of the world tokenizer (the default run's) or an
agent checkpoint.
"""
from __future__ import annotations

from collections import Counter

import torch

from framelab.agent.rewards import score, verdict_tokens  # also registers the agent's rewards
from framelab.agent.data import as_tensor
from framelab.agent.guide import guided_sample, put_guides
from framelab.agent.loop import FORCED, AgentConfig, answer_of, renderer_for, run_agent, \
    split_call, start_context
from framelab.agent.tools import NO_CALL, ToolResult, Toolbox
from framelab.datamodules.special_tokens import (IM_END, PAD, TOOL_CALL, TOOL_CALL_END, VIDEO_PAD)
from framelab.errors import UserError
from framelab.kernels import linear_cross_entropy
from framelab.lightning_modules.base import FramelabModule
from framelab.lightning_modules.policy import POLICY_STAGES, PolicyStages
from framelab.lightning_modules.video_qa import world_model_spec
from framelab.models.config import ModelConfig
from framelab.models.multimodal import MultimodalLM
from framelab.rl.rollout import Rollout, rollout

STAGES = ("sft", "rl")
AGENT_DEFAULTS = {"max_turns": 5, "max_new_tokens": 64, "overview": 8, "budget": 2048, "k": 3,
                  "text_weight": 0.5, "index": "tower", "val_episodes": 32, "guide": False,
                  "verdict_credit": 0.0}


class AgentModule(PolicyStages, FramelabModule):
    def __init__(self, model: dict, stage: str = "sft", agent: dict | None = None,
                 init_from: str | None = None, init_parts: list[str] | None = None,
                 freeze: dict | None = None, optim: dict | None = None,
                 scheduler: dict | None = None, rl: dict | None = None, opd: dict | None = None,
                 loss_chunk_size: int = 4096):
        super().__init__(optim, scheduler, init_from, init_parts, freeze)
        self.save_hyperparameters()
        if stage not in STAGES:
            raise UserError(f"module.stage={stage!r}; the agent trains with one of "
                            f"{', '.join(STAGES)}")
        unknown = sorted(set(agent or {}) - set(AGENT_DEFAULTS))
        if unknown:
            raise UserError(f"module.agent has unknown keys {unknown}; valid: "
                            f"{', '.join(AGENT_DEFAULTS)}")
        self.agent_cfg = {**AGENT_DEFAULTS, **dict(agent or {})}
        if self.agent_cfg["index"] not in ("tower", "pixels"):
            raise UserError(f"module.agent.index={self.agent_cfg['index']!r}; choose tower (the "
                            "vision tower's clip embeddings) or pixels (a diagnostic)")
        if int(self.agent_cfg["max_turns"]) < 1:
            raise UserError(f"module.agent.max_turns={self.agent_cfg['max_turns']}: expected >= 1")
        if float(self.agent_cfg["verdict_credit"]) < 0:
            raise UserError(f"module.agent.verdict_credit={self.agent_cfg['verdict_credit']}: "
                            "expected >= 0 (0 turns the per-token credit off)")
        self.stage = stage
        self.init_policy(stage, rl, opd)
        self.model_cfg = dict(model)
        self.loss_chunk_size = loss_chunk_size
        self.tokens: dict[str, int] = {}
        self.tokenizer = None
        self._val: list[dict] = []
        self.expert_notes = {"notes": True, "note_form": "names"}   # the data's, for guides

    # ---- model --------------------------------------------------------------------------------
    def on_datamodule(self, dm) -> None:
        if dm is not None and hasattr(dm, "setup") and getattr(dm, "tokenizer", None) is None:
            dm.setup("fit")
        if dm is not None:
            self.tokenizer = getattr(dm, "tokenizer", None)
            self.expert_notes = {"notes": bool(getattr(dm, "notes", True)),
                                 "note_form": str(getattr(dm, "note_form", "names"))}

    def model_config(self, dm, init_spec):
        return world_model_spec(self.model_cfg, dm, init_spec,
                                (VIDEO_PAD, PAD, IM_END, TOOL_CALL, TOOL_CALL_END), "AgentModule")

    def build_model(self, spec: dict) -> MultimodalLM:
        self.config, self.tokens = ModelConfig.from_dict(spec["config"]), dict(spec["tokens"])
        return MultimodalLM(self.config, self.tokens[VIDEO_PAD])

    def check_init_spec(self, theirs: dict) -> None:
        if theirs.get("module") not in (None, "VideoLLMModule", type(self).__name__):
            raise UserError(f"init_from={self.init_from}: a {theirs['module']} checkpoint; the agent "
                            "starts from a VideoLLMModule or AgentModule checkpoint")
        mine = self.model_spec["tokens"]
        if any(theirs.get("tokens", {}).get(k, v) != v for k, v in mine.items()):
            raise UserError(f"init_from={self.init_from}: its token ids differ from this data's; "
                            "start from a checkpoint trained with the world tokenizer")

    def agent_config(self, **over) -> AgentConfig:
        c = self.agent_cfg
        return AgentConfig(max_turns=int(c["max_turns"]), max_new_tokens=int(c["max_new_tokens"]),
                           overview=int(c["overview"]), budget=c["budget"], k=int(c["k"]),
                           text_weight=float(c["text_weight"]), index=str(c["index"]), **over)

    # ---- sft ----------------------------------------------------------------------------------
    def compute_loss(self, batch):
        hidden = self.model.hidden_states(batch["input_ids"], batch.get("videos"),
                                          batch.get("cu_seqlens"))
        targets = batch["labels"][:, 1:]
        n = int((targets != -100).sum())
        if n == 0:
            return hidden.sum() * 0.0, 0
        return linear_cross_entropy(hidden[:, :-1], self.model.lm.output_weight, targets,
                                    chunk_size=self.loss_chunk_size), n

    def training_step(self, batch, batch_idx):
        if self.stage in POLICY_STAGES:
            return self.policy_training_step(batch, batch_idx)
        return super().training_step(batch, batch_idx)

    # ---- rl: what PolicyStages asks -------------------------------------------------------------
    def prompt_documents(self, batch) -> list[dict]:
        r = renderer_for(self.model, self.tokenizer)
        docs = []
        for ep in batch["episodes"]:
            frames = as_tensor(ep["frames"]).to(self.device)
            ctx = start_context(r, frames, ep["question"], int(self.agent_cfg["overview"]))
            out = ctx.render()
            video = {"frames": int(frames.shape[0]), "fps": float(ep["fps"]),  # agent_checks
                     "max_turns": int(self.agent_cfg["max_turns"])}
            docs.append({"prompt": out.ids, "videos": out.videos,
                         "meta": {**ep["meta"], "video": video},
                         "reference": [], "frames": frames, "fps": ep["fps"]})
        return docs

    def decode_text(self, ids: list[int]) -> str:
        ids = [t for t in ids if t not in (self.tokens[VIDEO_PAD], self.tokens[PAD])]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def stop_tokens(self) -> list[int]:
        return [self.tokens[IM_END]]

    def pad_id(self) -> int:
        return self.tokens[PAD]

    def roll_and_score(self, docs: list[dict]) -> Rollout:
        cfg, g = self.rl_cfg, int(self.rl_cfg["group_size"])
        turns = int(self.agent_cfg["max_turns"])
        r = renderer_for(self.model, self.tokenizer)
        shared = [Toolbox(self.model, self.tokenizer, d["frames"], d["fps"],
                          k=int(self.agent_cfg["k"]),
                          text_weight=float(self.agent_cfg["text_weight"]),
                          features=str(self.agent_cfg["index"])) for d in docs]
        boxes: dict[int, Toolbox] = {}

        def tool(i: int, completion: list[int]):
            k = i // g
            box = boxes.setdefault(i, Toolbox(self.model, self.tokenizer, docs[k]["frames"],
                                              docs[k]["fps"], k=shared[k].k,
                                              text_weight=shared[k].text_weight))
            return rollout_tool(r, box, shared[k], completion, turns)

        was_training = self.model.training
        self.model.eval()
        ro = rollout(self.model, [d["prompt"] for d in docs], [d["videos"] for d in docs], g,
                     max_new_tokens=int(cfg["max_new_tokens"]),
                     temperature=float(cfg["temperature"]),
                     top_k=cfg["top_k"], top_p=cfg["top_p"], stop_tokens=self.stop_tokens(),
                     generator=self.generator(), tool=tool, tool_stop=self.tokens[TOOL_CALL_END],
                     max_turns=turns, max_total=cfg["max_total"])
        if self.agent_cfg["guide"]:
            self.guide(ro, docs, shared, r, turns)
        self.model.train(was_training)
        ro.extra["doc"] = [docs[k] for k in ro.group]
        ro.extra["text"] = [self.decode_text(c) for c in ro.completions]
        total, terms = self.rewards(ro.extra["text"], [d["meta"] for d in ro.extra["doc"]],
                                    ro.lengths)
        ro.extra["reward"] = total.tolist()
        for name, values in terms.items():
            ro.extra[f"term/{name}"] = values.tolist()
        if self.agent_cfg["guide"]:
            guided = [x for x, on in zip(ro.extra["reward"], ro.extra["guided"]) if on]
            self.log("train/rl/guided_groups", len(guided) / max(1, len(docs)))
            if guided:
                self.log("train/rl/guided_reward", sum(guided) / len(guided))
        return ro

    def token_bonus(self, ro: Rollout) -> list[list[float]] | None:
        """Per-token credit for the check notes' verdicts (`agent.verdict_credit` = w > 0). The
        tokens of each verdict get w * c * (right - p) on top of their episode's advantage: a
        right verdict is reinforced and a wrong one pushed down where it was written, not through
        the whole episode's reward. A verdict the note left out is wrong, charged to the first
        token of its turn, so leaving one out costs what a wrong one does. The two kinds of
        verdict, on an object the zoom showed (yes is right) and on one it did not (no is right),
        weigh half of the step's verdicts each (c = N / (2 N_kind)), and p is the share right
        under those weights (the balanced accuracy): most asked objects are not in a zoom, and
        unweighted credit pays a policy that says no to everything."""
        w = float(self.agent_cfg["verdict_credit"])
        if w <= 0:
            return None
        drop = (self.tokens[VIDEO_PAD], self.tokens[PAD])
        located = []
        for ids, text, doc in zip(ro.completions, ro.extra["text"], ro.extra["doc"]):
            pieces = ["" if t in drop else self.tokenizer.decode([t], skip_special_tokens=False)
                      for t in ids]
            try:
                located.append(verdict_tokens(pieces, text, doc["meta"]))
            except ValueError:        # a token whose text is not its own (split UTF-8): no credit
                located.append([])
        checks = [c for items in located for _, c in items]
        if not checks:
            return None
        kinds = Counter(c.seen for c in checks)
        weight = {k: len(checks) / (len(kinds) * n) for k, n in kinds.items()}
        base = sum(weight[c.seen] * c.right for c in checks) / len(checks)
        shown = [c.right for c in checks if c.seen]
        self.log("train/rl/verdicts_balanced", base)
        self.log("train/rl/verdicts_right", sum(c.right for c in checks) / len(checks))
        if shown:
            self.log("train/rl/verdicts_yes_right", sum(shown) / len(shown))
        self.log("train/rl/verdicts_asked", len(checks) / len(ro))
        self.log("train/rl/verdicts_written", sum(c.written for c in checks) / len(checks))
        bonus = [[0.0] * len(ids) for ids in ro.completions]
        for b, items in zip(bonus, located):
            for tokens, c in items:
                for i in tokens:
                    b[i] += w * weight[c.seen] * (float(c.right) - base)
        return bonus

    def guide(self, ro: Rollout, docs: list[dict], shared: list[Toolbox], r, turns: int) -> None:
        """Each group's last sample becomes the expert's episode on the real tools when it finds
        the needle (`framelab.agent.guide`); its behaviour log-probs are the current policy's."""
        cfg = self.rl_cfg
        guides = [guided_sample(r, box, d["meta"], turns, int(cfg["max_new_tokens"]),
                                **self.expert_notes)          # search and zoom: no sample state
                  for d, box in zip(docs, shared)]
        guides = [s if s is not None and (cfg["max_total"] is None or len(d["prompt"]) +
                                          len(s.completion) <= int(cfg["max_total"])) else None
                  for d, s in zip(docs, guides)]
        idx = put_guides(ro, [d["videos"] for d in docs], guides)
        if not idx:
            return
        part = Rollout([ro.prompts[i] for i in idx], [ro.videos[i] for i in idx],
                       [ro.completions[i] for i in idx], [ro.loss_mask[i] for i in idx],
                       [ro.logprobs[i] for i in idx], [True] * len(idx), [False] * len(idx),
                       [ro.turns[i] for i in idx], list(range(len(idx))), 1)
        scored = self.score_chunk(part, with_grad=False)
        logp, real = scored["logp"], scored["packed"].mask
        for j, i in enumerate(idx):
            ro.logprobs[i] = [x if m else 0.0 for x, m in zip(logp[j][real[j]].tolist(),
                                                              ro.loss_mask[i])]

    # ---- validation ----------------------------------------------------------------------------
    def evaluate(self, batch, split: str):
        loss, _ = self.compute_loss(batch)
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=1)
        done = len(self._val)
        for ep in batch["episodes"]:
            if done >= int(self.agent_cfg["val_episodes"]):
                break
            traj = run_agent(self.model, self.tokenizer, as_tensor(ep["frames"]), ep["fps"],
                             ep["question"], self.agent_config())
            self._val.append({**score(traj.answer, ep["meta"]), "turns": len(traj.turns)})
            done += 1
        return loss

    def log_agent(self, split: str) -> None:
        for key in ("accuracy", "tiou", "score", "turns"):
            vals = [v[key] for v in self._val if key in v]
            if vals:
                self.log(f"{split}/agent/{key}", sum(vals) / len(vals))
        self._val = []

    def validation_step(self, batch, batch_idx):
        return self.evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        return self.evaluate(batch, "test")

    def on_validation_epoch_end(self):
        self.log_agent("val")

    def on_test_epoch_end(self):
        self.log_agent("test")


def rollout_tool(r, box: Toolbox, shared: Toolbox, completion: list[int], max_turns: int):
    """The RL engine's tool callback: run the completion's last call on `box` (the sample's
    tools; searches use `shared`'s index, built once per video) and return (result ids, result
    frames), or None when the call was `finish` (the sample ends there)."""
    ends = [j for j, t in enumerate(completion) if t == r.ids[TOOL_CALL_END]]
    turn = completion[ends[-2] + 1 if len(ends) > 1 else 0:]        # this turn's tokens
    _, call = split_call(r.decode(turn))
    if call is not None and answer_of(call) is not None:
        return None
    if call is None:                  # "...</tool_call>" without its opening token: as the loop
        result = ToolResult(NO_CALL, error=True)
    else:
        if call.lstrip().startswith("search"):
            box.index = shared.get_index()
        result = box.run(call)
    calls = completion.count(r.ids[TOOL_CALL_END])
    then = [r.ids[TOOL_CALL]] + r.text(FORCED) if calls + 1 >= max_turns else []
    frames = [result.frames] if result.frames is not None else []
    return r.result(result.text, result.frames, then), frames
