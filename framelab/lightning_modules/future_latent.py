"""FutureLatentModule: Future-L1's interleaved latent visual reasoning for video event prediction,
its baselines, its data selection and LA-DAPO (docs/future_l1.md).

Reply layouts (`module.mode`), built from the datamodule's packed batch by inserting tokens before
each assistant reply:
- `latent` (Future-L1): `<|latent_start|> <|latent_pad|> x budget <|latent_end|>` then the reply.
  The span's start and end are trained with the reply's cross-entropy, the pads are not;
- `text` (the text chain-of-thought baseline): `<think> meta.hint </think>` then the reply: the
  future, verbalised, trained as text reasoning;
- `answer` (the answer-only baseline): the reply alone.

Stages (`module.stage`):
- `sft`: loss = CE on the reply tokens + latent.weight x alignment (latent mode). Teacher-forced,
  the latent slots' inputs are the targets: the vision tower's (+ projector's) tokens of the
  sample's future frames (`future_videos`, data.load_future=true), average-pooled to the budget,
  no gradient. The prediction for target t is the latent fed back at slot t, i.e. the hidden
  state (through `latent_head` with latent.head=true) one position before it; alignment is its
  MSE to the target (latent.loss=mse) or 1 - cosine (cosine). The vision tower and projector are
  frozen (module.freeze), as released.
- `rl`: LA-DAPO (`framelab.lightning_modules.future_latent_rl`).
- `select`: Future-L1-50K's rule, run by `framelab test` over the split to select from
  (`'data.test_splits=[train]'`): each question is answered greedily as is, and with the future
  shown (`select.hint`: `frames`, the future clip as a second video in the prompt; `latent`, the
  span filled with the future frames' targets; `text`, meta.hint at the end of the question); the
  sample ids where the hint turns a wrong answer right are written to `select.out`, one a line.
  `module.train_ids=FILE` then trains on those samples only.

Decoding (validation, test, rollouts): greedy (rollouts: sampled) with the latent spans of
`framelab.models.latent.LatentSpans`, budget x latent.inference_factor latents per span at most;
the answer is the text after the reply's last `<|latent_end|>` or `</think>`, scored by the
video-QA evaluator (`val/mcq_acc/future`, `val/open_acc/future`, `val/accuracy`). Every mode
answers by generation, so the three are scored the same way.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from framelab import checkpoints
from framelab.datamodules.special_tokens import (IM_END, LATENT_END, LATENT_PAD, LATENT_START,
                                                 PAD, THINK, THINK_END, VIDEO_PAD, VISION_END,
                                                 VISION_START)
from framelab.errors import UserError
from framelab.evaluation.video_qa import ANSWERED, VideoQAEvaluator, evaluation_config
from framelab.kernels import linear_cross_entropy
from framelab.lightning_modules.base import FramelabModule, check_parts
from framelab.lightning_modules.future_latent_rl import LatentPolicy
from framelab.lightning_modules.policy import PolicyStages
from framelab.lightning_modules.video_qa import VideoQASteps, world_model_spec
from framelab.models.config import ModelConfig
from framelab.models.generation import decode, decode_embeddings
from framelab.models.latent import (LatentSpans, ProjectionHead, latent_hidden_states, latent_of,
                                    pool_targets, splice_latents, vmf_sampler)
from framelab.models.multimodal import MultimodalLM
from framelab.models.vision import merged_grid
from framelab.rl.rewards import accuracy_reward

STAGES = ("sft", "rl", "select")
MODES = ("latent", "text", "answer")
HINTS = ("frames", "latent", "text")
PARTS = ("vision", "projector", "lm", "latent_head")
TOKENS = (VIDEO_PAD, PAD, IM_END, LATENT_START, LATENT_END, LATENT_PAD, THINK, THINK_END,
          VISION_START, VISION_END)
OWN = ("FutureLatentModule", "VideoLLMModule")      # checkpoints init_from may come from
LATENT_DEFAULTS = {"budget": 32, "inference_factor": 2.0, "head": False, "weight": 0.2,
                   "loss": "mse", "kappa": 0.01, "normalize": False, "clip": 0.1, "alpha": 0.5,
                   "sample": False, "hint_tokens": 48, "min_steps": None}
SELECT_DEFAULTS = {"hint": "frames", "out": "selected_ids.txt"}


def section(name: str, given: dict | None, defaults: dict) -> dict:
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise UserError(f"module.{name} has unknown keys {unknown}; valid: {', '.join(defaults)}")
    return {**defaults, **given}


def latent_config(latent: dict | None) -> dict:
    cfg = section("latent", latent, LATENT_DEFAULTS)
    if int(cfg["budget"]) < 1:
        raise UserError(f"module.latent.budget={cfg['budget']}: expected at least 1 latent step")
    if float(cfg["inference_factor"]) < 1.0:
        raise UserError(f"module.latent.inference_factor={cfg['inference_factor']}: expected >= 1 "
                        "(the released 2.0 lets a span run to twice the training budget)")
    if cfg["min_steps"] is not None and not 0 <= int(cfg["min_steps"]) <= int(cfg["budget"]):
        raise UserError(f"module.latent.min_steps={cfg['min_steps']}: expected 0..budget, or null "
                        "(= budget: a sampled <|latent_end|> ends a span only once it is that long)")
    if cfg["loss"] not in ("mse", "cosine"):
        raise UserError(f"module.latent.loss={cfg['loss']!r}; choose mse (released) or cosine")
    if not 0.0 < float(cfg["clip"]) < 1.0:
        raise UserError(f"module.latent.clip={cfg['clip']}: expected a ratio clip in (0, 1) "
                        "(released: 0.1)")
    return cfg


class FutureLatentModule(VideoQASteps, LatentPolicy, PolicyStages, FramelabModule):
    def __init__(self, model: dict, stage: str = "sft", mode: str = "latent",
                 latent: dict | None = None, select: dict | None = None,
                 train_ids: str | None = None, rewards: dict | None = None,
                 rl: dict | None = None, evaluation: dict | None = None,
                 init_from: str | None = None, init_parts: list[str] | None = None,
                 freeze: dict | None = None, optim: dict | None = None,
                 scheduler: dict | None = None, loss_chunk_size: int = 4096):
        check_parts(freeze, init_parts, PARTS)
        super().__init__(optim, scheduler, init_from, init_parts, freeze)
        self.save_hyperparameters()
        if stage not in STAGES:
            raise UserError(f"module.stage={stage!r}; choose one of {', '.join(STAGES)}")
        if mode not in MODES:
            raise UserError(f"module.mode={mode!r}; choose one of {', '.join(MODES)}")
        self.stage, self.mode = stage, mode
        self.latent_cfg = latent_config(latent)
        self.select_cfg = section("select", select, SELECT_DEFAULTS)
        if self.select_cfg["hint"] not in HINTS:
            raise UserError(f"module.select.hint={self.select_cfg['hint']!r}; choose one of "
                            f"{', '.join(HINTS)}")
        self.init_policy(stage, rl, None)
        self.init_latent_policy(rewards)
        self.train_ids = self.read_ids(train_ids) if train_ids else None
        self.model_cfg = dict(model)
        self.eval_cfg = evaluation_config(evaluation)
        self.loss_chunk_size = loss_chunk_size
        self.tokens: dict[str, int] = {}
        self.tokenizer = None
        self.evaluator: VideoQAEvaluator | None = None
        self._selected: list[str] = []
        self._select_counts = [0, 0, 0]           # questions, right as is, right with the hint

    @staticmethod
    def read_ids(path: str) -> set[str]:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"module.train_ids={path}: no such file; give the ids file a "
                            "module.stage=select run wrote (module.select.out)")
        return {line.strip() for line in p.read_text().splitlines() if line.strip()}

    # ---- model ------------------------------------------------------------------------------
    def model_config(self, dm, init_spec: dict | None) -> dict:
        return world_model_spec(self.model_cfg, dm, init_spec, TOKENS, "FutureLatentModule")

    def build_model(self, spec: dict) -> MultimodalLM:
        model = MultimodalLM(ModelConfig.from_dict(spec["config"]), spec["tokens"][VIDEO_PAD])
        if self.latent_cfg["head"]:
            model.latent_head = ProjectionHead(model.config.hidden)
        return model

    def install(self, spec: dict) -> None:
        super().install(spec)
        self.config, self.tokens = self.model.config, dict(self.model_spec["tokens"])
        self.evaluator = VideoQAEvaluator(self.tokens, self.tokenizer, self.eval_cfg)

    def check_init_spec(self, theirs: dict) -> None:
        """A video-LLM checkpoint (answer-only SFT, the usual start) or a Future-L1 one; a latent
        head the checkpoint lacks starts fresh."""
        if theirs.get("module") not in (None,) + OWN:
            raise UserError(f"init_from={self.init_from}: a {theirs['module']} checkpoint; start "
                            "from a video-LLM or Future-L1 checkpoint of this data")
        parts = self.init_parts or [n for n, _ in self.model.named_children()]
        theirs = {k.split(".", 1)[0] for k in
                  checkpoints.read_weights(self.init_from, "init_from")["state_dict"]}
        if "latent_head" not in theirs:
            if self.init_parts and "latent_head" in self.init_parts:
                raise UserError(f"init_from={self.init_from} has no latent_head part; drop it "
                                "from module.init_parts")
            parts = [p for p in parts if p != "latent_head"]
        self.init_parts = parts           # a head in the checkpoint but not here is left out

    # ---- layouts ----------------------------------------------------------------------------
    def span_ids(self) -> list[int]:
        t, k = self.tokens, int(self.latent_cfg["budget"])
        return [t[LATENT_START]] + [t[LATENT_PAD]] * k + [t[LATENT_END]]

    def future_targets(self, future: torch.Tensor) -> torch.Tensor:
        """(budget, D): the vision tower's + projector's tokens of a future clip, pooled; no
        gradient (frozen targets)."""
        with torch.no_grad():
            feats = self.model.projector(self.model.vision([future])[0])
        return pool_targets(feats, int(self.latent_cfg["budget"])).detach()

    def layout(self, batch) -> dict:
        """The batch with this mode's tokens before each reply (see the module docstring): one
        packed row, its labels, cu_seqlens, videos, and the latent targets (n_slots, D) or None."""
        cu = batch.get("cu_seqlens")
        if cu is None:
            raise UserError("FutureLatentModule needs packed batches: set data.pack=true")
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        metas, keys = list(batch.get("meta") or []), list(batch.get("sample_ids") or [])
        futures = list(batch.get("future_videos") or [])
        videos, vid_iter = [], iter(batch.get("videos") or [])
        if self.mode == "latent" and not futures:
            raise UserError("module.mode=latent needs the future frames: set data.load_future=true "
                            "(data=video_future, or real shards with future frames)")
        vpad = self.tokens[VIDEO_PAD]
        out_ids, out_lab, lengths, targets = [], [], [], []
        item = 0
        for d in range(len(cu) - 1):
            lo, hi = int(cu[d]), int(cu[d + 1])
            seq, lab = ids[lo:hi], labels[lo:hi]
            runs = sum(1 for i, t in enumerate(seq) if t == vpad and (i == 0 or seq[i - 1] != t))
            vids = [next(vid_iter) for _ in range(runs)]
            starts = [i for i, t in enumerate(lab) if t != -100 and (i == 0 or lab[i - 1] == -100)]
            if not starts:                                   # the padding document
                continue
            meta, key = (metas[item] if item < len(metas) else {}), (
                keys[item] if item < len(keys) else None)
            future = futures[item] if item < len(futures) else None
            item += 1
            key = meta.get("key", key)              # the id the select stage writes
            if self.train_ids is not None and self.training and str(key) not in self.train_ids:
                continue
            insert = self.inserted(meta)
            new_seq, new_lab, last = [], [], 0
            for s in starts:
                new_seq += seq[last:s] + insert[0]
                new_lab += lab[last:s] + insert[1]
                last = s
                if self.mode == "latent":
                    targets.append(self.future_targets(future))
            new_seq += seq[last:]
            new_lab += lab[last:]
            out_ids += new_seq
            out_lab += new_lab
            lengths.append(len(new_seq))
            videos += vids
        if not lengths:
            return {}
        dev = batch["input_ids"].device
        cu_new = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=dev)
        cu_new[1:] = torch.cumsum(torch.tensor(lengths, device=dev), 0)
        return {"input_ids": torch.tensor([out_ids], device=dev),
                "labels": torch.tensor([out_lab], device=dev), "cu_seqlens": cu_new,
                "videos": videos, "targets": torch.cat(targets) if targets else None}

    def inserted(self, meta: dict) -> tuple[list[int], list[int]]:
        """(tokens, labels) this mode writes before a reply."""
        if self.mode == "latent":
            span = self.span_ids()
            return span, [span[0]] + [-100] * (len(span) - 2) + [span[-1]]
        if self.mode == "text":
            hint = self.hint_ids(meta)
            seq = [self.tokens[THINK]] + hint + [self.tokens[THINK_END]]
            return seq, list(seq)
        return [], []

    def hint_ids(self, meta: dict) -> list[int]:
        if not meta.get("hint"):
            raise UserError(f"module.mode=text: sample {meta.get('key')} has no meta.hint (the "
                            "world's future task writes one)")
        if self.tokenizer is None:
            raise UserError("module.mode=text needs the datamodule's tokenizer")
        return self.tokenizer.encode(meta["hint"], add_special_tokens=False).ids

    # ---- SFT --------------------------------------------------------------------------------
    def sft_loss(self, b: dict) -> tuple[torch.Tensor, int, dict]:
        """(CE + weight x alignment, reply tokens, terms) of a laid-out batch."""
        pad = self.tokens[LATENT_PAD]
        hidden = latent_hidden_states(self.model, b["input_ids"], b["videos"] or None,
                                      b["cu_seqlens"], pad, b["targets"])
        targets = b["labels"][:, 1:]
        n = int((targets != -100).sum())
        ce = (linear_cross_entropy(hidden[:, :-1], self.model.lm.output_weight, targets,
                                   chunk_size=self.loss_chunk_size) if n else hidden.sum() * 0.0)
        terms = {"ce": ce.detach()}
        loss = ce
        if b["targets"] is not None:
            align = self.alignment(hidden, b["input_ids"], b["targets"])
            terms["align"] = align.detach()
            loss = ce + float(self.latent_cfg["weight"]) * align
        return loss, n, terms

    def alignment(self, hidden, input_ids, targets) -> torch.Tensor:
        """Mean alignment loss of the latents predicted one slot before each target."""
        slots = (input_ids == self.tokens[LATENT_PAD]).flatten().nonzero().flatten()
        pred = latent_of(self.model, hidden.reshape(-1, hidden.shape[-1])[slots - 1])
        if self.latent_cfg["loss"] == "cosine":
            return (1 - F.cosine_similarity(pred.float(), targets.float(), dim=-1)).mean()
        return F.mse_loss(pred.float(), targets.float())

    def compute_loss(self, batch):
        b = self.layout(batch)
        if not b:                                # every sample filtered out by train_ids
            zero = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return zero, 0
        loss, n, terms = self.sft_loss(b)
        for name, value in terms.items():
            self.log(f"train/{name}", value)
        return loss, n

    def training_step(self, batch, batch_idx):
        if self.stage == "rl":
            return self.policy_training_step(batch, batch_idx)
        if self.stage == "select":
            raise UserError("module.stage=select runs with `framelab test` "
                            "('data.test_splits=[train]'), not fit")
        return super().training_step(batch, batch_idx)

    # ---- decoding ---------------------------------------------------------------------------
    def inference_budget(self) -> int:
        return int(int(self.latent_cfg["budget"]) * float(self.latent_cfg["inference_factor"]))

    def reply_budget(self) -> int:
        """New tokens a reply may take: the answer plus this mode's span or hint."""
        extra = {"latent": self.inference_budget() + 2,
                 "text": int(self.latent_cfg["hint_tokens"]) + 2, "answer": 0}[self.mode]
        return int(self.eval_cfg["max_new_tokens"]) + extra

    def spans(self, rows: int, sample: bool = False) -> LatentSpans | None:
        if self.mode != "latent":
            return None
        t = self.tokens
        sampler = (vmf_sampler(float(self.latent_cfg["kappa"]), self.generator())
                   if sample and self.latent_cfg["sample"] else None)
        least = self.latent_cfg["min_steps"]
        least = int(self.latent_cfg["budget"]) if least is None else int(least)
        return LatentSpans(self.model, rows, t[LATENT_START], t[LATENT_END], t[LATENT_PAD],
                           self.inference_budget(), sampler, min_steps=least)

    def suppressed(self) -> list[int]:
        return [self.tokens[VIDEO_PAD], self.tokens[LATENT_PAD]]

    def answer_ids(self, ids: list[int]) -> list[int]:
        """The reply after its last `<|latent_end|>` or `</think>`."""
        marks = [i for i, t in enumerate(ids) if t in (self.tokens[LATENT_END],
                                                        self.tokens[THINK_END])]
        return ids[marks[-1] + 1:] if marks else ids

    @torch.no_grad()
    def replies(self, prompts: list[list[int]], videos: list[list]) -> list[list[int]]:
        """Greedy replies (token ids, spans included) to the prompts."""
        was = self.model.training
        self.model.eval()
        gen = decode(self.model, prompts, self.reply_budget(), videos=videos,
                     stop_tokens=[self.tokens[IM_END]], step_hook=self.spans(len(prompts)),
                     suppress_tokens=self.suppressed())
        self.model.train(was)
        return gen.tokens

    def answer(self, docs: list[dict]) -> list[str]:
        out = self.replies([d["prompt"] for d in docs], [d["videos"] for d in docs])
        return [self.evaluator.decode(self.answer_ids(r)) for r in out]

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate(self, batch, batch_idx: int, split: str):
        b = self.layout(batch)
        loss = self.sft_loss(b)[0] if b else torch.zeros((), device=self.device)
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=1)
        docs = [d for d in self.evaluator.documents(batch)
                if d["meta"].get("format") in ANSWERED]
        replies = self.answer(docs) if docs else []
        self.evaluator.score(split, docs, replies)
        logger = self.logger
        if batch_idx == 0 and docs and logger is not None and hasattr(logger.experiment, "add_text"):
            logger.experiment.add_text(f"{split}/samples", self.evaluator.samples_text(docs, replies),
                                       self.global_step)
        return loss

    def predict_step(self, batch, batch_idx):
        docs = self.evaluator.documents(batch)
        replies = self.answer(docs) if docs else []
        return [{"key": d["meta"].get("key"), "task": d["meta"].get("task"), "reply": r,
                 "answer": d["meta"].get("answer")} for d, r in zip(docs, replies)]

    # ---- data selection (stage select) ------------------------------------------------------
    def test_step(self, batch, batch_idx):
        if self.stage != "select":
            return super().test_step(batch, batch_idx)
        docs = [d for d in self.evaluator.documents(batch) if d["meta"].get("format") in ANSWERED]
        if not docs:
            return None
        plain = self.answer(docs)
        hinted = self.hinted_answers(docs, batch)
        for d, a, h in zip(docs, plain, hinted):
            right_a = accuracy_reward(a, d["meta"]) >= 1.0
            right_h = accuracy_reward(h, d["meta"]) >= 1.0
            self._select_counts[0] += 1
            self._select_counts[1] += right_a
            self._select_counts[2] += right_h
            if right_h and not right_a:
                self._selected.append(str(d["meta"].get("key")))
        return None

    def on_test_epoch_end(self):
        if self.stage != "select":
            return super().on_test_epoch_end()
        n, plain, hinted = self._select_counts
        out = Path(self.select_cfg["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        kept = sorted(set(self._selected))
        out.write_text("".join(f"{k}\n" for k in kept))
        self.log("test/select/questions", float(n))
        self.log("test/select/kept", float(len(kept)))
        self.log("test/select/plain_acc", plain / max(n, 1))
        self.log("test/select/hint_acc", hinted / max(n, 1))
        print(f"selected {len(kept)} of {n} questions -> {out.resolve()}")

    def sample_of(self, doc: dict, batch) -> int:
        cu = batch["cu_seqlens"].tolist()
        return next(s for s in range(len(cu) - 1) if cu[s] <= doc["start"] < cu[s + 1])

    def hinted_answers(self, docs: list[dict], batch) -> list[str]:
        hint = self.select_cfg["hint"]
        futures = batch.get("future_videos") or []
        if hint in ("frames", "latent") and not futures:
            raise UserError(f"module.select.hint={hint} needs the future frames: set "
                            "data.load_future=true")
        if hint == "text":
            prompts = [self.privileged_prompt(d["prompt"], " Hint: " + d["meta"].get("hint", ""),
                                              "module.select.hint=text") for d in docs]
            out = self.replies(prompts, [d["videos"] for d in docs])
            return [self.evaluator.decode(self.answer_ids(r)) for r in out]
        if hint == "frames":
            prompts, videos = [], []
            for d in docs:
                fut = futures[self.sample_of(d, batch)]
                g = merged_grid(fut.shape[0], fut.shape[2], fut.shape[3], self.config.vision)
                block = ([self.tokens[VISION_START]] + [self.tokens[VIDEO_PAD]] * (g[0] * g[1] * g[2])
                         + [self.tokens[VISION_END]])
                end = max(i for i, t in enumerate(d["prompt"]) if t == self.tokens[IM_END])
                prompts.append(d["prompt"][:end] + block + d["prompt"][end:])
                videos.append(list(d["videos"]) + [fut])
            out = self.replies(prompts, videos)
            return [self.evaluator.decode(self.answer_ids(r)) for r in out]
        return [self.latent_hint_answer(d, futures[self.sample_of(d, batch)]) for d in docs]

    @torch.no_grad()
    def latent_hint_answer(self, doc: dict, future: torch.Tensor) -> str:
        """The answer after a span whose latents are the future frames' targets."""
        ids = torch.tensor([doc["prompt"] + self.span_ids()], device=self.device)
        inputs = self.model.prepare(ids, list(doc["videos"]) or None)
        embeds = splice_latents(inputs.embeds, ids, self.tokens[LATENT_PAD],
                                self.future_targets(future))
        valid = torch.ones(ids.shape, dtype=torch.bool, device=self.device)
        gen = decode_embeddings(self.model.lm, embeds, inputs.positions, valid,
                                int(self.eval_cfg["max_new_tokens"]),
                                stop_tokens=[self.tokens[IM_END]],
                                suppress_tokens=self.suppressed())
        return self.evaluator.decode(gen.tokens[0])
