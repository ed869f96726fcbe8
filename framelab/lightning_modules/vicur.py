"""ViCuRDistillModule: on-policy distillation from a teacher privileged with visual cues (ViCuR),
with the student's sink-token cue recovery.

One training step is the `opd` stage of `framelab.lightning_modules.policy` (docs/rl.md): the
student samples `rl.group_size` replies (one, as released) to each of `rl.prompts` questions of
the batch from its normal prompt; the teacher scores exactly those tokens under its own input;
the student follows the per-token advantage -(log p_s - log p_t), clamped as released
(`opd.logp_floor`, `opd.kl_clamp`), through the policy-gradient loss (`opd.form=pg`), or the
generalized JSD on its samples (`opd.form=gjsd`, `opd.beta`).

The teacher (`module.teacher`):
- `visual_cue` (ViCuR): the question's visual cue (`meta.cue` of the world's `cue` task: the
  frames where the target is visible and its box in each) as text written at the end of the
  question (`cue.text`, the released form) and/or as the highlighted frames in place of the video
  (`cue.frames`: outside the cue's frames everything is dimmed, inside only the box keeps its
  brightness; `framelab.world.tasks.cue.highlight`). The frame numbers count the frames the
  student was shown (the clip's sampled frames), from 0.
- `answer` (the baseline ViCuR beats): the reference reply written at the end of the question.
- `stronger` (plain OPD): the normal prompt; `opd.teacher` must name a checkpoint.
`opd.teacher` null is the frozen starting policy (self-distillation); a checkpoint is another
model with the same tokenizer (any video-LLM checkpoint of this data).

The student's model is `MultimodalLM` with `model.cue_recovery` = k (5 as released; 0: none):
sink-token cross-attention after every k-th decoder layer (`framelab.models.cue_recovery`), new
parts with a zero output projection, so an `init_from` checkpoint without them (the SFT starting
point) loads every other part and starts with the same outputs. Evaluation is the video-QA
evaluator's (`val/mcq_acc/<task>`, `val/open_acc/<task>`, `val/accuracy`), as for VideoLLMModule.
"""
from __future__ import annotations

import numpy as np
import torch

from framelab.datamodules.special_tokens import IM_END, IM_START, PAD, VIDEO_PAD
from framelab.errors import UserError
from framelab.evaluation.video_qa import VideoQAEvaluator, evaluation_config
from framelab.kernels import linear_cross_entropy
from framelab.lightning_modules.base import FramelabModule, check_parts
from framelab.lightning_modules.policy import PolicyStages
from framelab.lightning_modules.video_qa import VideoQASteps, world_model_spec
from framelab.models.config import ModelConfig
from framelab.models.multimodal import MultimodalLM
from framelab.world.tasks.cue import highlight

TEACHERS = ("visual_cue", "answer", "stronger")
CUE_DEFAULTS = {"text": True, "frames": True, "dim": 0.25, "margin": 0.05}
PARTS = ("vision", "projector", "lm", "cue_recovery")
TOKENS = (VIDEO_PAD, PAD, IM_END, IM_START)
OWN = ("ViCuRDistillModule", "VideoLLMModule")   # checkpoints init_from may come from


def cue_config(cue: dict | None, teacher: str) -> dict:
    cfg = {**CUE_DEFAULTS, **dict(cue or {})}
    unknown = sorted(set(cfg) - set(CUE_DEFAULTS))
    if unknown:
        raise UserError(f"module.cue has unknown keys {unknown}; valid: {', '.join(CUE_DEFAULTS)}")
    if teacher == "visual_cue" and not (cfg["text"] or cfg["frames"]):
        raise UserError("module.teacher=visual_cue with module.cue.text=false and "
                        "module.cue.frames=false shows the teacher no cue; enable one of them")
    if not 0.0 <= float(cfg["dim"]) <= 1.0:
        raise UserError(f"module.cue.dim={cfg['dim']}: expected a brightness factor in [0, 1]")
    return cfg


def clip_cue(meta: dict) -> dict:
    """The question's cue in the frames the student was shown: {"frames": [k], "boxes": [box]},
    k counting the sampled frames from 0 (meta.frame_indices maps them to the clip's frames)."""
    cue = meta.get("cue")
    if not cue:
        raise UserError(f"module.teacher=visual_cue: sample {meta.get('key')} has no meta.cue "
                        "(train on the world's cue task: data=video_cue)")
    shown = list(meta.get("frame_indices") or range(max(cue["frames"]) + 1))
    box = dict(zip(cue["frames"], cue["boxes"]))
    frames = [k for k, f in enumerate(shown) if f in box]
    return {"frames": frames, "boxes": [box[shown[k]] for k in frames]}


def cue_text(cue: dict) -> str:
    """The cue as text, as the released teacher prompt carries it: frames and boxes
    (x0 y0 x1 y1 in [0, 1] of the frame)."""
    if not cue["frames"]:
        return " Visual cue: the target is not visible in the frames shown."
    boxes = "; ".join(f"frame {k} box {' '.join(f'{v:.2f}' for v in b)}"
                      for k, b in zip(cue["frames"], cue["boxes"]))
    frames = " ".join(map(str, cue["frames"]))
    return f" Visual cue: the target is visible in frames {frames}; {boxes}."


def highlighted(video: torch.Tensor, cue: dict, dim: float, margin: float) -> torch.Tensor:
    """`video` (T, 3, H, W) in [0, 1] with the world's highlight of `cue` applied."""
    frames = (video.detach().permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8)
    out = highlight(frames.cpu().numpy(), cue, dim=dim, margin=margin)
    return torch.from_numpy(np.ascontiguousarray(out)).to(video.device).permute(0, 3, 1, 2) \
        .to(video.dtype) / 255.0


class ViCuRDistillModule(VideoQASteps, PolicyStages, FramelabModule):
    def __init__(self, model: dict, teacher: str = "visual_cue", cue: dict | None = None,
                 rl: dict | None = None, opd: dict | None = None, evaluation: dict | None = None,
                 init_from: str | None = None, init_parts: list[str] | None = None,
                 freeze: dict | None = None, optim: dict | None = None,
                 scheduler: dict | None = None, loss_chunk_size: int = 4096):
        check_parts(freeze, init_parts, PARTS)
        super().__init__(optim, scheduler, init_from, init_parts, freeze)
        self.save_hyperparameters()
        if teacher not in TEACHERS:
            raise UserError(f"module.teacher={teacher!r}; choose one of {', '.join(TEACHERS)}")
        if "teacher_prompt" in dict(opd or {}):
            raise UserError("module.opd.teacher_prompt is set by module.teacher here "
                            f"({', '.join(TEACHERS)}); drop it")
        self.stage, self.teacher_kind = "opd", teacher
        self.init_policy("opd", rl, opd)
        if teacher == "stronger" and not self.opd_cfg["teacher"]:
            raise UserError("module.teacher=stronger needs module.opd.teacher=CKPT (the stronger "
                            "model's checkpoint)")
        self.cue_cfg = cue_config(cue, teacher)
        self.model_cfg = dict(model)
        self.eval_cfg = evaluation_config(evaluation)
        self.loss_chunk_size = loss_chunk_size
        self.tokens: dict[str, int] = {}
        self.tokenizer = None
        self.evaluator: VideoQAEvaluator | None = None

    # ---- model ------------------------------------------------------------------------------
    def model_config(self, dm, init_spec: dict | None) -> dict:
        return world_model_spec(self.model_cfg, dm, init_spec, TOKENS, "ViCuRDistillModule")

    def build_model(self, spec: dict) -> MultimodalLM:
        """The model of a spec (the student's, or a teacher checkpoint's), nothing else changed."""
        tokens = spec["tokens"]
        return MultimodalLM(ModelConfig.from_dict(spec["config"]), tokens[VIDEO_PAD],
                            sink_token_id=tokens.get(IM_START))

    def install(self, spec: dict) -> None:
        super().install(spec)
        self.config, self.tokens = self.model.config, dict(self.model_spec["tokens"])
        self.evaluator = VideoQAEvaluator(self.tokens, self.tokenizer, self.eval_cfg)

    def check_init_spec(self, theirs: dict) -> None:
        """A video-LLM checkpoint (the SFT starting point) or a ViCuR one; the cue-recovery part
        starts fresh (zero output) when the checkpoint has none."""
        if theirs.get("module") not in (None,) + OWN:
            raise UserError(f"init_from={self.init_from}: a {theirs['module']} checkpoint; start "
                            "ViCuR from a video-LLM checkpoint (e.g. the SFT run's last.ckpt)")
        has_cue = int(theirs["config"].get("cue_recovery") or 0) > 0
        if hasattr(self.model, "cue_recovery") and not has_cue:
            if self.init_parts and "cue_recovery" in self.init_parts:
                raise UserError(f"init_from={self.init_from} has no cue_recovery part; drop it "
                                "from module.init_parts")
            self.init_parts = [p for p in (self.init_parts or [n for n, _ in
                                                               self.model.named_children()])
                               if p != "cue_recovery"]

    # ---- training ---------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        return self.policy_training_step(batch, batch_idx)

    def teacher_input(self, doc: dict, videos: list) -> tuple[list[int], list]:
        """The teacher's prompt and videos for `doc` (see the module docstring)."""
        prompt = doc["prompt"]
        if self.teacher_kind == "answer":
            prompt = self.answer_prompt(doc, "module.teacher=answer")
        elif self.teacher_kind == "visual_cue":
            cue, c = clip_cue(doc["meta"]), self.cue_cfg
            if c["text"]:
                prompt = self.privileged_prompt(prompt, cue_text(cue), "module.teacher=visual_cue")
            if c["frames"] and videos:
                videos = [highlighted(v, cue, float(c["dim"]), float(c["margin"]))
                          for v in videos]
        return prompt, videos

    def loss_and_hidden(self, batch):
        """(reply loss, reply tokens, hidden states) of a batch: what evaluation reports as
        `<split>/loss` and reads the option letters from."""
        hidden = self.model.hidden_states(batch["input_ids"], batch.get("videos"),
                                          batch.get("cu_seqlens"))
        targets = batch["labels"][:, 1:]
        n = int((targets != -100).sum())
        if n == 0:
            return hidden.sum() * 0.0, 0, hidden
        loss = linear_cross_entropy(hidden[:, :-1], self.model.lm.output_weight, targets,
                                    chunk_size=self.loss_chunk_size)
        return loss, n, hidden
