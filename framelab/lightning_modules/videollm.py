"""VideoLLMModule: InternVideo3's training stages over `MultimodalLM`.

- stage `cpt` (continued pretraining): next-token loss on every text token of the interleaved
  video–text samples (vision placeholders, padding and the first token of each packed document are
  excluded). The paper trains on captions; the embedded world has question–answer dialogues, so
  here the questions and answers are the text.
- stage `sft` (short-to-long SFT): loss on assistant tokens only (the datamodule's labels), or,
  with `prompt_loss_weight` w > 0, also on the prompt's text tokens at w times a reply token's
  weight (the loss is the weighted mean over both).
- stage `vision` (the vision stage, before the other two): the tower and projector learn to
  perceive from the world's ground truth -- per-token colour, shape and motion heads on the tower
  and projector outputs and a count head (`framelab.models.perception`); the LM is not run. It
  needs `data.perception_labels=true`. A stage of this module rather than a module of its own:
  the tower and projector are this model's, trained on this datamodule's clips, so the curriculum
  callback can switch `vision` -> `sft` within one run (`phases: [{step: 0, stage: vision}, ...]`)
  and the default trains both in one command; `experiment=vision_pretrain` runs the stage alone,
  and `init_from` with `init_parts=[vision, projector]` carries it into any other run.
  With `vision_text_tokens` n > 0 the idle LM is not idle: it also learns (reply loss) from the
  row's text-only documents, up to n tokens a step (the default run: its `choose` drills), so
  SFT starts from an LM that has already practised finding an option's letter.
  With `perception_weight` w > 0, cpt and sft add w times the perception loss. With
  `grounding_weight` g > 0 they add g times the word-grounding loss
  (`framelab.models.perception.grounding_loss`): the LM's hidden state at each object's vision
  token predicts, through the LM's output head, that object's colour, shape and direction words.
- stages `rl` (rule-based RL: GRPO / DAPO family) and `opd` (on-policy distillation), after SFT:
  `PolicyStages` (framelab/lightning_modules/policy.py, docs/rl.md), settings `module.rl` and
  `module.opd`; the prompts are the batch's questions, the rewards read their ground truth.
- `freeze`: {vision, projector, lm}: frozen parts get no gradient and no optimiser state.
- `init_from=CKPT`: start from another run's weights (a `framelab fit` checkpoint or the output of
  `framelab convert mla`) — weights only; the optimiser, schedule and step start fresh (resuming a
  run is `ckpt_path`). M²LA shape keys (`kv_lora_rank`, `qk_rope_dim`) left null in the config are
  taken from the checkpoint; any other mismatch is a one-line error. `init_from=hf:DIR` starts from
  a Hugging Face Qwen3-VL directory: the run trains that checkpoint's architecture, not the `model`
  group's, with the data checked against its tokenizer and prompt layout
  (`framelab.lightning_modules.qwen3_vl`; docs/qwen3_vl.md).

The model follows the shared lifecycle (`FramelabModule`): it is built in `setup()`, because the
vocabulary and the video placeholder id come from the datamodule's tokenizer, and its spec (config
and token ids) is stored in every checkpoint. `init_parts=[vision, projector]` takes only those
parts from `init_from`.

Evaluation (`validate`/`test`/`predict`) goes through `framelab.evaluation.VideoQAEvaluator`
(`module.evaluation`: option-letter scoring or greedy generation, Video-MME-style extraction,
exact match, temporal IoU, per-task and per-question-type metrics such as `val/mcq_acc/describe`,
`val/mcq_named_acc/describe/colour`, `val/accuracy`), plus `<split>/loss` and a few
question/answer samples as TensorBoard text.
"""
from __future__ import annotations

import torch
from torch import nn

from framelab.datamodules.special_tokens import IM_END, PAD, VIDEO_PAD
from framelab.errors import UserError
from framelab.evaluation.video_qa import VideoQAEvaluator, data_parallel, evaluation_config
from framelab.kernels import linear_cross_entropy
from framelab.lightning_modules.base import FramelabModule, check_parts
from framelab.lightning_modules.policy import POLICY_STAGES, PolicyStages
from framelab.lightning_modules.qwen3_vl import is_qwen3_vl, qwen3_vl_model, qwen3_vl_spec
from framelab.lightning_modules.video_qa import SHAPE_KEYS, VideoQASteps, world_model_spec
from framelab.models.config import ModelConfig
from framelab.models.multimodal import MultimodalLM
from framelab.models.perception import PerceptionHeads, grounding_loss, perception_loss
from framelab.models.vision import video_token_count
from framelab.world.vocab import COLOUR_NAMES, DIRECTIONS, SHAPES

STAGES = ("vision", "cpt", "sft") + POLICY_STAGES
PARTS = ("vision", "projector", "lm")


class VideoLLMModule(VideoQASteps, PolicyStages, FramelabModule):
    def __init__(self, model: dict, stage: str = "sft", freeze: dict | None = None,
                 init_from: str | None = None, init_parts: list[str] | None = None,
                 evaluation: dict | None = None, loss_chunk_size: int = 4096,
                 prompt_loss_weight: float = 0.0, perception_weight: float = 0.0,
                 perception_objects: bool = False, grounding_weight: float = 0.0,
                 vision_text_tokens: int = 0, optim: dict | None = None, scheduler: dict | None = None,
                 rl: dict | None = None, opd: dict | None = None, vision: dict | None = None):
        """`vision` is read only from checkpoints written before the vision tower's config moved
        under `model.vision`; new configs set `model.vision`."""
        freeze = dict(freeze or {})
        check_parts(freeze, init_parts, PARTS)
        super().__init__(optim, scheduler, init_from, init_parts, freeze)
        self.save_hyperparameters()
        if stage not in STAGES:
            raise UserError(f"module.stage={stage!r}; choose one of {', '.join(STAGES)}")
        self.stage = stage
        self.init_policy(stage, rl, opd)
        self.model_cfg = dict(model)
        if vision:
            self.model_cfg["vision"] = {**dict(vision), **dict(self.model_cfg.get("vision") or {})}
        self.eval_cfg = evaluation_config(evaluation)
        self.loss_chunk_size = loss_chunk_size
        if not 0.0 <= float(prompt_loss_weight) <= 1.0:
            raise UserError(f"module.prompt_loss_weight={prompt_loss_weight}: expected a weight in "
                            "[0, 1] (a prompt token's loss relative to a reply token's; 0: replies only)")
        self.prompt_loss_weight = float(prompt_loss_weight)
        self.perception_weight = float(perception_weight)
        self.perception_objects = bool(perception_objects)
        self.grounding_weight = float(grounding_weight)
        if int(vision_text_tokens) < 0:
            raise UserError(f"module.vision_text_tokens={vision_text_tokens}: expected >= 0 (text "
                            "tokens per step the LM trains on in the vision stage; 0: none)")
        self.vision_text_tokens = int(vision_text_tokens)
        self.words: torch.Tensor | None = None   # (attribute, class) -> word id, for grounding
        self.perception: PerceptionHeads | None = None
        self.tokens: dict[str, int] = {}
        self.tokenizer = None
        self.evaluator: VideoQAEvaluator | None = None

    # ---- model ------------------------------------------------------------------------------
    def model_config(self, dm, init_spec: dict | None) -> dict:
        """The LM and vision config with the datamodule's vocabulary; M²LA shape keys left null
        are taken from the `init_from` checkpoint."""
        if init_spec is not None and is_qwen3_vl(init_spec["config"]) and \
                hasattr(dm, "special_ids"):
            return qwen3_vl_spec(dm, init_spec, self.init_from, self.model_cfg.get("preset"))
        return world_model_spec(self.model_cfg, dm, init_spec, (VIDEO_PAD, PAD, IM_END),
                                "VideoLLMModule")

    def build_model(self, spec: dict) -> MultimodalLM:
        self.config, self.tokens = ModelConfig.from_dict(spec["config"]), dict(spec["tokens"])
        self.evaluator = VideoQAEvaluator(self.tokens, self.tokenizer, self.eval_cfg,
                                          step_runs=is_qwen3_vl(spec["config"]))
        dm = self.current_datamodule()
        if getattr(dm, "perception_labels", False):  # the heads exist when their labels do
            self.perception = PerceptionHeads(self.config, self.perception_objects)
        elif self.stage == "vision" or self.perception_weight > 0 or self.grounding_weight > 0:
            raise UserError("module.stage=vision, module.perception_weight and "
                            "module.grounding_weight need the ground-truth labels: set "
                            "data.perception_labels=true (embedded world data)")
        if self.grounding_weight > 0:
            self.words = attribute_words(self.tokenizer)
        if not is_qwen3_vl(spec["config"]):
            return MultimodalLM(self.config, self.tokens[VIDEO_PAD])
        return qwen3_vl_model(self.config, self.tokens)

    def install(self, spec: dict) -> None:
        """As the base's; a Qwen3-VL model's DeepStack mergers count as the `projector` part (they
        are mergers like it) for `freeze` and `init_parts`."""
        super().install(spec)
        if hasattr(self.model, "deepstack"):
            if self.freeze.get("projector"):
                self.model.deepstack.requires_grad_(False)
            if self.init_parts and "projector" in self.init_parts and \
                    "deepstack" not in self.init_parts:
                self.init_parts.append("deepstack")

    def set_stage(self, stage: str) -> None:
        """Switch the training stage (the curriculum's `stage` key)."""
        if stage not in STAGES:
            raise UserError(f"stage {stage!r}; choose one of {', '.join(STAGES)}")
        if stage == "vision" and self.perception is None:
            raise UserError("a vision stage needs data.perception_labels=true")
        if (stage in POLICY_STAGES) != (self.stage in POLICY_STAGES):
            raise UserError(f"the curriculum cannot switch stage {self.stage} -> {stage}: rl and opd "
                            "optimise by hand; start them as their own run (init_from=CKPT)")
        self.stage = stage

    def check_init_spec(self, theirs: dict) -> None:
        """Loading the LM: its shape keys must agree (one line naming the key to pass)."""
        super().check_init_spec(theirs)
        if self.init_parts is not None and "lm" not in self.init_parts:
            return
        config = theirs["config"]
        for key in ("attention",) + SHAPE_KEYS + ("hidden", "layers", "heads", "kv_heads",
                                                  "head_dim", "vocab_size"):
            if config.get(key) != getattr(self.config, key):
                raise UserError(f"init_from={self.init_from}: checkpoint has model.{key}="
                                f"{config.get(key)} but this run has {getattr(self.config, key)}; "
                                f"pass model.{key}={config.get(key)}")

    # ---- loss -------------------------------------------------------------------------------
    def targets(self, batch) -> torch.Tensor:
        """Unshifted labels for this stage (-100 = no loss)."""
        if self.stage != "cpt":          # sft, and the replies rl / opd are evaluated on
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
        if self.stage == "vision":
            loss, _ = self.perception_terms(batch)
            frames = sum(int(v.shape[0]) for v in batch.get("videos") or [])
            text = text_documents(batch, self.tokens[VIDEO_PAD], self.vision_text_tokens)
            if text is not None and self.training:   # the idle LM learns from the text-only docs
                text_loss, _, _ = self.loss_and_hidden(text)
                self.log("train/vision_text_loss", text_loss.detach())
                return loss + text_loss, frames
            if data_parallel():  # the LM is not run: DDP still waits for its (zero) gradient
                loss = loss + 0.0 * sum(p.sum() for p in self.model.lm.parameters() if p.requires_grad)
            return loss, frames
        loss, n, hidden = self.loss_and_hidden(batch)
        if self.words is not None and self.training and batch.get("videos"):
            grounding = self.grounding_terms(batch, hidden)
            if grounding is not None:
                loss = loss + self.grounding_weight * grounding
        if self.perception is not None and self.training:
            if self.perception_weight > 0:
                loss = loss + self.perception_weight * self.perception_terms(batch)[0]
            elif data_parallel():  # unused heads still need a (zero) gradient under DDP
                loss = loss + 0.0 * sum(p.sum() for p in self.perception.parameters())
        return loss, n

    def perception_terms(self, batch):
        """The perception loss of a batch's videos (framelab.models.perception), logged by term."""
        loss, terms = perception_loss(self.model.vision, self.model.projector, self.perception,
                                      batch.get("videos") or [], batch.get("vision_labels") or [])
        for name, value in terms.items():
            self.log(f"train/perception/{name}", value)
        return loss, terms

    def grounding_terms(self, batch, hidden) -> torch.Tensor | None:
        """The word-grounding loss of a batch (None when no video of it is labelled), logged."""
        videos = batch["videos"]
        counts = [video_token_count(v.shape[0], v.shape[2], v.shape[3], self.config.vision)
                  for v in videos]
        loss = grounding_loss(hidden, batch["input_ids"], self.tokens[VIDEO_PAD], counts,
                              batch.get("vision_labels") or [None] * len(videos),
                              self.words.to(hidden.device), self.model.lm.output_weight)
        if loss is not None:
            self.log("train/grounding", loss.detach())
        return loss

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

    # ---- the policy stages (framelab.lightning_modules.policy) -------------------------------
    def training_step(self, batch, batch_idx):
        if self.stage in POLICY_STAGES:
            return self.policy_training_step(batch, batch_idx)
        return super().training_step(batch, batch_idx)


def text_documents(batch, video_id: int, max_tokens: int) -> dict | None:
    """The text-only documents of a packed row (no video placeholder), whole and in order, as a
    packed row of their own of at most `max_tokens` tokens; None when there are none (or
    max_tokens is 0). Documents that do not fit are left out, the rest still taken."""
    cu = batch.get("cu_seqlens")
    if max_tokens <= 0 or cu is None:
        return None
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    bounds = cu.tolist()
    keep, total = [], 0
    for start, end in zip(bounds[:-1], bounds[1:]):
        length = end - start
        doc = ids[start:end]
        if total + length > max_tokens or bool((doc == video_id).any()) or \
                bool((labels[start:end] == -100).all()):
            continue
        keep.append((start, end))
        total += length
    if not keep:
        return None
    lengths = torch.tensor([0] + [e - s for s, e in keep])
    return {"input_ids": torch.cat([ids[s:e] for s, e in keep])[None],
            "labels": torch.cat([labels[s:e] for s, e in keep])[None],
            "cu_seqlens": torch.cumsum(lengths, 0).to(cu.dtype).to(cu.device)}


def attribute_words(tokenizer) -> torch.Tensor:
    """(3, 9) token ids of the words that name perception label ids (colour, shape, direction;
    datamodules.perception_labels), -1 for background and "not clearly moving"; one line when the
    tokenizer splits a word (the grounding loss predicts one token per word)."""
    table = torch.full((3, 9), -1, dtype=torch.long)
    for row, names in enumerate((COLOUR_NAMES, SHAPES, DIRECTIONS)):
        for j, name in enumerate(names):
            ids = tokenizer.encode(" " + name, add_special_tokens=False).ids
            if len(ids) != 1:
                raise UserError(f"module.grounding_weight: the tokenizer splits {name!r} into "
                                f"{len(ids)} tokens; grounding needs one token per attribute word")
            table[row, j] = ids[0]
    return table
