"""VideoLLMModule: InternVideo3's first two training stages over `MultimodalLM`.

- stage `cpt` (continued pretraining): next-token loss on every text token of the interleaved
  video–text samples (vision placeholders, padding and the first token of each packed document are
  excluded). The paper trains on captions; the embedded world has question–answer dialogues, so
  here the questions and answers are the text.
- stage `sft` (short-to-long SFT): loss on assistant tokens only (the datamodule's labels), or,
  with `prompt_loss_weight` w > 0, also on the prompt's text tokens at w times a reply token's
  weight (the loss is the weighted mean over both).
- `freeze`: {vision, projector, lm}: frozen parts get no gradient and no optimiser state.
- `init_from=CKPT`: start from another run's weights (a `framelab fit` checkpoint or the output of
  `framelab convert mla`) — weights only; the optimiser, schedule and step start fresh (resuming a
  run is `ckpt_path`). M²LA shape keys (`kv_lora_rank`, `qk_rope_dim`) left null in the config are
  taken from the checkpoint; any other mismatch is a one-line error.

The model is built in `setup()` because the vocabulary and the video placeholder id come from the
datamodule's tokenizer; its resolved config and token ids are stored in every checkpoint.

Evaluation (`validate`/`test`): multiple-choice questions are answered by option-letter scoring
(`evaluation.mcq=score`: the letter A-D with the highest logit right after the prompt, from the
loss forward pass) or, with `mcq=generate` or a "rationale" reply ("Answer: red B", see
`framelab.world.tasks.common`), by greedy cached generation (`generate_multimodal`) and
`extract_choice` (denominator: every MCQ question, unanswered = wrong); open answers (exact match)
and "when" spans (temporal IoU) are generated when `evaluation.generate` is true. Metric names:
`<split>/mcq_acc/<task>`, `<split>/open_acc/<task>`, `<split>/tiou/<task>`, `<split>/accuracy` (all
MCQ + open questions) and `<split>/loss`; for "rationale" replies also
`<split>/mcq_named_acc/<task>` (the reply names the right option's text, whatever its letter:
perception apart from the letter lookup). MCQ and open accuracy are also logged per question type
(`<split>/mcq_acc/<task>/<qtype>`, e.g. `describe/colour`). A few question/answer samples go to
TensorBoard as text.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from framelab.datamodules.special_tokens import IM_END, PAD, VIDEO_PAD
from framelab.errors import UserError
from framelab.kernels import linear_cross_entropy
from framelab.lightning_modules.base import FramelabModule, build_model_config
from framelab.metrics.choice import ChoiceAccuracy, extract_named
from framelab.metrics.temporal import TemporalIoU
from framelab.models.config import ModelConfig, VisionConfig
from framelab.models.generation import generate_multimodal
from framelab.models.multimodal import MultimodalLM

STAGES = ("cpt", "sft")
PARTS = ("vision", "projector", "lm")
SHAPE_KEYS = ("kv_lora_rank", "qk_rope_dim")
MCQ_MODES = ("score", "generate")   # option letters by log-prob after the prompt | greedy reply
LETTERS = "ABCD"


def hit(reply: str, answer) -> tuple[str, str]:
    """An exact-match answer (case and outer spaces ignored) as a one-letter choice, ("A", "A") or
    ("-", "A"), so exact matches are counted by `ChoiceAccuracy` too."""
    return ("A" if reply.strip().lower() == str(answer or "").strip().lower() else "-"), "A"


def load_weights_file(path: str) -> dict:
    """{'state_dict': model weights without prefix, 'model_config', 'token_ids'} of a checkpoint."""
    if not Path(path).is_file():
        raise UserError(f"init_from={path}: no such file; give a checkpoint (.ckpt) of a "
                        "videollm run or the output of `framelab convert mla`")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "videollm_model" not in ckpt:
        raise UserError(f"init_from={path}: not a video-LLM checkpoint (no 'videollm_model' entry); "
                        "give a checkpoint of experiment=videollm_* or of `framelab convert mla`")
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return {"state_dict": state, "model_config": ckpt["videollm_model"],
            "token_ids": ckpt.get("videollm_tokens", {})}


def data_parallel() -> bool:
    """Whether this process is one of several in a torch.distributed group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


class VideoLLMModule(FramelabModule):
    def __init__(self, model: dict, vision: dict | None = None, stage: str = "sft",
                 freeze: dict | None = None, init_from: str | None = None,
                 evaluation: dict | None = None, loss_chunk_size: int = 4096,
                 prompt_loss_weight: float = 0.0,
                 optim: dict | None = None, scheduler: dict | None = None):
        super().__init__(optim, scheduler)
        self.save_hyperparameters()
        if stage not in STAGES:
            raise UserError(f"module.stage={stage!r}; choose one of {', '.join(STAGES)}")
        freeze = dict(freeze or {})
        if set(freeze) - set(PARTS):
            raise UserError(f"module.freeze has unknown parts {sorted(set(freeze) - set(PARTS))}; "
                            f"valid: {', '.join(PARTS)}")
        self.stage, self.freeze, self.init_from = stage, freeze, init_from
        self.model_cfg, self.vision_cfg = dict(model), dict(vision or {})
        self.eval_cfg = {"max_new_tokens": 12, "log_samples": 4, "generate": True, "mcq": "score",
                         **(evaluation or {})}
        if self.eval_cfg["mcq"] not in MCQ_MODES:
            raise UserError(f"module.evaluation.mcq={self.eval_cfg['mcq']!r}; choose one of "
                            f"{', '.join(MCQ_MODES)}")
        self.loss_chunk_size = loss_chunk_size
        if not 0.0 <= float(prompt_loss_weight) <= 1.0:
            raise UserError(f"module.prompt_loss_weight={prompt_loss_weight}: expected a weight in "
                            "[0, 1] (a prompt token's loss relative to a reply token's; 0: replies only)")
        self.prompt_loss_weight = float(prompt_loss_weight)
        self.model: MultimodalLM | None = None
        self.tokens: dict[str, int] = {}
        self.tokenizer = None
        self.metrics = nn.ModuleDict()

    # ---- model ------------------------------------------------------------------------------
    def build(self, config: ModelConfig, tokens: dict[str, int]) -> None:
        self.config, self.tokens = config, dict(tokens)
        self.model = MultimodalLM(config, tokens[VIDEO_PAD])
        for part in PARTS:
            if self.freeze.get(part):
                sub = self.model.lm if part == "lm" else getattr(self.model, part)
                sub.requires_grad_(False)

    def config_for(self, vocab_size: int, source: dict | None) -> ModelConfig:
        cfg = dict(self.model_cfg)
        cfg["vocab_size"] = cfg.get("vocab_size") or vocab_size
        if source is not None:
            for key in SHAPE_KEYS:
                if cfg.get(key) is None:
                    cfg[key] = source.get(key)
        cfg["vision"] = VisionConfig(**self.vision_cfg)
        return build_model_config(cfg)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and getattr(dm, "tokenizer", None) is None and hasattr(dm, "setup"):
            dm.setup(stage)
        if dm is not None:
            self.tokenizer = getattr(dm, "tokenizer", None)
        if self.model is not None:
            return
        if dm is None or not hasattr(dm, "special_ids"):
            raise UserError("VideoLLMModule needs a video-text datamodule (data=video_world, "
                            "video_needle, video_future or video_real)")
        source = load_weights_file(self.init_from) if self.init_from else None
        tokens = {k: dm.special_ids[k] for k in (VIDEO_PAD, PAD, IM_END)}
        self.build(self.config_for(dm.vocab_size, source and source["model_config"]), tokens)
        if source is not None:
            self.load_init(source)

    def load_init(self, source: dict) -> None:
        theirs = source["model_config"]
        for key in ("attention",) + SHAPE_KEYS + ("hidden", "layers", "heads", "kv_heads",
                                                  "head_dim", "vocab_size"):
            if theirs.get(key) != getattr(self.config, key):
                raise UserError(f"init_from={self.init_from}: checkpoint has model.{key}="
                                f"{theirs.get(key)} but this run has {getattr(self.config, key)}; "
                                f"pass model.{key}={theirs.get(key)}")
        missing, unexpected = self.model.load_state_dict(source["state_dict"], strict=False)
        if missing or unexpected:
            raise UserError(f"init_from={self.init_from}: weights do not match the model "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["videollm_model"] = self.config.to_dict()
        checkpoint["videollm_tokens"] = self.tokens

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.model is None:
            if "videollm_model" not in checkpoint:
                raise UserError("checkpoint has no 'videollm_model' entry: it was not written by "
                                "VideoLLMModule; give a checkpoint of experiment=videollm_*")
            self.build(ModelConfig.from_dict(dict(checkpoint["videollm_model"])),
                       checkpoint["videollm_tokens"])

    # ---- loss -------------------------------------------------------------------------------
    def targets(self, batch) -> torch.Tensor:
        """Unshifted labels for this stage (-100 = no loss)."""
        if self.stage == "sft":
            return batch["labels"]
        return self.text_targets(batch)

    def text_targets(self, batch) -> torch.Tensor:
        """Unshifted labels on every text token (cpt's targets)."""
        ids = batch["input_ids"]
        labels = ids.masked_fill((ids == self.tokens[VIDEO_PAD]) | (ids == self.tokens[PAD]), -100)
        cu = batch.get("cu_seqlens")
        starts = cu[:-1].long() if cu is not None else torch.zeros(1, dtype=torch.long)
        labels[:, starts.to(ids.device)] = -100          # nothing predicts a document's first token
        return labels

    def compute_loss(self, batch):
        return self.loss_and_hidden(batch)[:2]

    def loss_and_hidden(self, batch):
        """(loss, loss tokens, hidden states) of a batch."""
        hidden = self.model.hidden_states(batch["input_ids"], batch.get("videos"),
                                          batch.get("cu_seqlens"))
        targets = self.targets(batch)[:, 1:]
        n = int((targets != -100).sum())
        if n == 0:                                       # e.g. a row of prompts only
            loss = hidden.sum() * 0.0
        else:
            loss = linear_cross_entropy(hidden[:, :-1], self.model.lm.output_weight, targets,
                                        chunk_size=self.loss_chunk_size)
        if self.stage == "sft" and self.prompt_loss_weight > 0 and self.training:
            loss = self.add_prompt_loss(loss, n, hidden, targets, batch)
        if self.training and not batch.get("videos") and data_parallel():
            # a row of text-only samples under DDP: the vision tower and projector still get a
            # (zero) gradient, since DDP's reducer waits for every trainable parameter. In one
            # process they keep no gradient, so the optimizer leaves them alone that step.
            idle = [p for m in (self.model.vision, self.model.projector) for p in m.parameters()
                    if p.requires_grad]
            loss = loss + 0.0 * sum(p.sum() for p in idle)
        return loss, n, hidden

    def add_prompt_loss(self, loss, n: int, hidden, targets, batch):
        """The weighted mean of the reply loss (`loss` over `n` tokens) and the prompt text's loss
        (every text token the reply labels leave out), a prompt token weighing prompt_loss_weight."""
        prompt = self.text_targets(batch)[:, 1:].masked_fill(targets != -100, -100)
        m = int((prompt != -100).sum())
        if m == 0:
            return loss
        prompt_loss = linear_cross_entropy(hidden[:, :-1], self.model.lm.output_weight, prompt,
                                           chunk_size=self.loss_chunk_size)
        w = self.prompt_loss_weight * m
        return (loss * n + prompt_loss * w) / (n + w)

    # ---- evaluation -------------------------------------------------------------------------
    def documents(self, batch) -> list[dict]:
        """Per assistant reply of every sample: the prompt ids up to the reply (earlier turns and
        their reference replies included), the sample's videos, the reference reply ids and the
        meta of that turn (`meta["turns"][j]` over the sample's meta for multi-question samples)."""
        ids, labels = batch["input_ids"], batch["labels"]
        cu = batch.get("cu_seqlens")
        spans = ([(0, int(cu[i]), int(cu[i + 1])) for i in range(len(cu) - 1)] if cu is not None
                 else [(r, 0, ids.shape[1]) for r in range(ids.shape[0])])
        videos, metas, docs = iter(batch.get("videos") or []), iter(batch.get("meta") or []), []
        for row, lo, hi in spans:
            seq, lab = ids[row, lo:hi].tolist(), labels[row, lo:hi].tolist()
            runs = sum(1 for i, t in enumerate(seq) if t == self.tokens[VIDEO_PAD]
                       and (i == 0 or seq[i - 1] != t))
            vids = [next(videos) for _ in range(runs)]
            starts = [i for i, t in enumerate(lab) if t != -100 and (i == 0 or lab[i - 1] == -100)]
            if not starts:                                # padding document
                continue
            meta = next(metas, {})
            turns = meta.get("turns") or [{}]
            for j, start in enumerate(starts):
                end = next((i for i in range(start, len(lab)) if lab[i] == -100), len(lab))
                # a later reply with no turn record (e.g. real multi-turn data) is not scored
                turn = turns[j] if j < len(turns) else {"format": None}
                docs.append({"prompt": seq[:start], "videos": vids, "meta": {**meta, **turn},
                             "reference": lab[start:end], "row": row, "start": lo + start})
        return docs

    def metric(self, name: str, kind) -> nn.Module:
        key = name.replace("/", "__")
        if key not in self.metrics:
            self.metrics[key] = kind().to(self.device)
        return self.metrics[key]

    def decode(self, ids: list[int]) -> str:
        ids = [t for t in ids if t not in (self.tokens[IM_END], self.tokens[PAD])]
        if self.tokenizer is None:
            return " ".join(map(str, ids))
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def answer(self, docs: list[dict]) -> list[str]:
        out = generate_multimodal(self.model, [d["prompt"] for d in docs],
                                  [d["videos"] for d in docs], self.eval_cfg["max_new_tokens"],
                                  stop_tokens=[self.tokens[IM_END]], pad_id=self.tokens[PAD])
        return [self.decode(o) for o in out]

    def score(self, split: str, docs: list[dict], replies: list[str]) -> None:
        for d, reply in zip(docs, replies):
            meta, task = d["meta"], d["meta"].get("task") or "unknown"
            fmt, answer = meta.get("format"), str(meta.get("answer", ""))
            if fmt == "span":
                self.metric(f"{split}/tiou/{task}", TemporalIoU).update([reply], [meta.get("spans", [])])
                continue
            if fmt == "open":                # exact match, counted as a one-letter choice
                reply, answer = hit(reply, answer)
            elif fmt != "mcq":
                continue
            self.count(split, f"{fmt}_acc", meta, reply, answer)
            self.metric(f"{split}/accuracy", ChoiceAccuracy).update([reply], [answer])
            if fmt == "mcq" and meta.get("reply") == "rationale":   # named the right option?
                named = extract_named(reply) or ""
                self.count(split, "mcq_named_acc", meta, *hit(named, meta.get("answer_text")))

    def count(self, split: str, name: str, meta: dict, reply: str, answer: str) -> None:
        """Update `<split>/<name>/<task>` and, for typed questions, `.../<task>/<qtype>`."""
        key = f"{split}/{name}/{meta.get('task') or 'unknown'}"
        for k in [key] + ([f"{key}/{meta['qtype']}"] if meta.get("qtype") else []):
            self.metric(k, ChoiceAccuracy).update([reply], [answer])

    def letter_ids(self) -> list[int] | None:
        """Token ids of the option letters A-D when each is one token (else None: generate)."""
        if not hasattr(self, "_letter_ids"):
            ids = None
            if self.tokenizer is not None:
                enc = [self.tokenizer.encode(c, add_special_tokens=False).ids for c in LETTERS]
                ids = [e[0] for e in enc] if all(len(e) == 1 for e in enc) else None
            self._letter_ids = ids
        return self._letter_ids

    @staticmethod
    def letter_reply(meta: dict) -> bool:
        """A multiple-choice question whose reference reply is the bare letter (scorable)."""
        return meta.get("format") == "mcq" and meta.get("reply", "letter") == "letter"

    def choose_letters(self, hidden: torch.Tensor, docs: list[dict]) -> list[str]:
        """Per document, the option letter with the highest log-prob right after the prompt."""
        letters = torch.tensor(self.letter_ids(), device=hidden.device)
        h = torch.stack([hidden[d["row"], d["start"] - 1] for d in docs])
        logits = self.model.lm.logits(h)[:, letters]
        return [LETTERS[i] for i in logits.argmax(-1).tolist()]

    def evaluate(self, batch, batch_idx: int, split: str):
        loss, _, hidden = self.loss_and_hidden(batch)
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=1)
        docs = self.documents(batch)
        scored = (self.eval_cfg["mcq"] == "score" and self.letter_ids() is not None)
        by_score = [d for d in docs if scored and self.letter_reply(d["meta"])]
        # captions (format "caption") and unrecorded turns are not scored: not generated either
        rest = [d for d in docs if not any(d is b for b in by_score)
                and d["meta"].get("format") in ("mcq", "open", "span")]
        if not self.eval_cfg["generate"]:                 # MCQ replies are always answered
            rest = [d for d in rest if d["meta"].get("format") == "mcq"]
        docs = by_score + rest
        replies = (self.choose_letters(hidden, by_score) if by_score else []) + (
            self.answer(rest) if rest else [])
        self.score(split, docs, replies)
        if batch_idx == 0 and docs:
            self.log_samples(split, docs, replies)
        return loss

    def log_samples(self, split: str, docs, replies) -> None:
        logger = self.logger
        if logger is None or not hasattr(logger.experiment, "add_text"):
            return
        lines = []
        for d, reply in list(zip(docs, replies))[: self.eval_cfg["log_samples"]]:
            question = self.decode([t for t in d["prompt"] if t != self.tokens[VIDEO_PAD]])
            lines.append(f"**Q** ({d['meta'].get('task')}): {question}  \n**model**: {reply}  \n"
                         f"**reference**: {self.decode(d['reference'])}")
        logger.experiment.add_text(f"{split}/samples", "\n\n---\n\n".join(lines), self.global_step)

    def log_metrics(self) -> None:
        for key, m in self.metrics.items():
            if not m.update_called:
                continue
            self.log(key.replace("__", "/"), m.compute(), sync_dist=False)
            m.reset()

    def validation_step(self, batch, batch_idx):
        return self.evaluate(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        return self.evaluate(batch, batch_idx, "test")

    def on_validation_epoch_end(self):
        self.log_metrics()

    def on_test_epoch_end(self):
        self.log_metrics()

    def predict_step(self, batch, batch_idx):
        docs = self.documents(batch)
        replies = self.answer(docs) if docs else []
        return [{"key": d["meta"].get("key"), "task": d["meta"].get("task"), "reply": r,
                 "answer": d["meta"].get("answer")} for d, r in zip(docs, replies)]
