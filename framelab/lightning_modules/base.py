"""The shared base of every framelab LightningModule: model lifecycle, optimiser, schedule, logging.

Model lifecycle. A subclass declares how its model is built and nothing more:
- `model_config(datamodule, init_spec) -> spec`: the model spec `{"config": dict, "tokens": dict}`
  from the module's own config and what the data decides (vocabulary, token ids, image grid).
  `datamodule` may be None (the spec must then be complete without it); `init_spec` is the spec of
  the `init_from` checkpoint, when there is one, for shape keys the config leaves open.
- `build_model(spec) -> nn.Module`: the model, from a spec alone.
The base builds `self.model` in `setup()` (once the datamodule is known: the trainer's, or one given
by `attach_datamodule(dm)` when predicting from the module's own requests), freezes the parts named
in `freeze`, loads `init_from` weights (all, or only the parts in `init_parts`) through
`framelab.checkpoints`, and stores the spec under one checkpoint key (`framelab_model`), so a
checkpoint rebuilds the model without data (`Module.load_from_checkpoint(path)`, `ckpt_path=`).
Parts are the model's top-level sub-modules (a MultimodalLM has `lm`, `vision`, `projector`).

Optimisation:
- AdamW with weight decay on matrices only (no decay on norms, biases, embeddings).
- Linear warmup then cosine decay to `min_lr_ratio` × lr over `scheduler.total_steps` (its own
  config key: the horizon is never taken silently from the trainer).
- Logs `train/loss`, `train/lr`, `train/grad_norm` (before clipping; clipping is the trainer's
  `gradient_clip_val`) and `train/tokens_per_s`.
Subclasses implement `compute_loss(batch) -> (loss, n_tokens)`.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import lightning as L
import torch
from torch import nn

from framelab import checkpoints
from framelab.errors import UserError
from framelab.evaluation.video_qa import data_parallel
from framelab.models.config import PRESETS, ModelConfig, VisionConfig, preset


# keys of the `model` group that configured the run, not the model's shape, before they moved
# to `runtime`: still found in the hyper-parameters of older checkpoints, and ignored
RUNTIME_KEYS = ("attn_backend", "kernels")


def build_model_config(cfg: dict) -> ModelConfig:
    """ModelConfig from the `model` config group: a preset plus the keys that are not null (the
    `vision` block likewise: its non-null keys over the preset's vision config, or the defaults)."""
    cfg = dict(cfg)
    name = cfg.pop("preset", "tiny")
    for key in RUNTIME_KEYS:
        cfg.pop(key, None)
    overrides = {k: v for k, v in cfg.items() if v is not None}
    if "mrope_section" in overrides:
        overrides["mrope_section"] = tuple(overrides["mrope_section"])
    try:
        if isinstance(overrides.get("vision"), dict):
            base = PRESETS[name].vision if name in PRESETS else None
            given = {k: v for k, v in overrides["vision"].items() if v is not None}
            if base is None and not given:
                overrides.pop("vision")          # a text preset, no vision key set
            else:
                overrides["vision"] = (replace(base, **given) if base is not None
                                       else VisionConfig(**given))
        return preset(name, **overrides)
    except (TypeError, ValueError) as exc:
        raise UserError(f"model config: {exc}") from exc


def check_parts(freeze: dict | None, init_parts: list[str] | None, parts) -> None:
    """One line for a `module.freeze` or `module.init_parts` that names a part the model lacks."""
    for key, given in (("freeze", set(freeze or {})), ("init_parts", set(init_parts or []))):
        if given - set(parts):
            raise UserError(f"module.{key} has unknown parts {sorted(given - set(parts))}; "
                            f"valid: {', '.join(parts)}")


def lr_lambda(warmup_steps: int, total_steps: int, min_lr_ratio: float):
    """Multiplier of the base lr at a step: linear warmup, cosine decay, then flat at the floor."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    embeddings = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or id(p) in embeddings or "norm" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


class FramelabModule(L.LightningModule):
    def __init__(self, optim: dict | None = None, scheduler: dict | None = None,
                 init_from: str | None = None, init_parts: list[str] | None = None,
                 freeze: dict | None = None):
        super().__init__()
        self.init_from, self.init_parts = init_from, list(init_parts) if init_parts else None
        self.freeze = {k: bool(v) for k, v in (freeze or {}).items()}
        self.phase_frozen: set[str] = set()     # parts a curriculum phase froze (set_frozen)
        self.model: nn.Module | None = None
        self.model_spec: dict | None = None
        self._attached = None
        self.optim_cfg = {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1,
                          **(optim or {})}
        self.sched_cfg = {"warmup_steps": 0, "total_steps": None, "min_lr_ratio": 0.1,
                          **(scheduler or {})}
        self._step_start: float | None = None

    # ---- subclasses -------------------------------------------------------------------------
    def model_config(self, datamodule, init_spec: dict | None) -> dict:
        """The model spec {"config": dict, "tokens": dict} (see the module docstring)."""
        raise NotImplementedError

    def build_model(self, spec: dict) -> nn.Module:
        raise NotImplementedError

    def compute_loss(self, batch) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def on_datamodule(self, datamodule) -> None:
        """Called in every `setup()` with the datamodule (or None): keep what evaluation or
        prediction needs from it (a tokenizer, a decoder). Nothing by default."""

    # ---- model lifecycle --------------------------------------------------------------------
    def attach_datamodule(self, datamodule) -> None:
        """Use `datamodule` for model sizes and decoding when the trainer runs without one (e.g.
        predicting from the module's own `predict_dataloader()`)."""
        self._attached = datamodule

    def current_datamodule(self):
        dm = self.trainer.datamodule if self._trainer is not None else None
        return dm if dm is not None else self._attached

    def setup(self, stage: str) -> None:
        dm = self.current_datamodule()
        self.on_datamodule(dm)
        if self.model is not None:
            return
        source = checkpoints.read_weights(self.init_from, "init_from") if self.init_from else None
        spec = self.model_config(dm, source["spec"] if source else None)
        self.install(spec)
        if source is not None:
            self.check_init_spec(source["spec"])
            checkpoints.load_weights(self.model, source, self.init_parts,
                                     f"init_from={self.init_from}")

    def install(self, spec: dict) -> None:
        """Build the model from `spec` and freeze the parts `freeze` names."""
        spec = {"module": type(self).__name__, "config": dict(spec["config"]),
                "tokens": dict(spec.get("tokens") or {})}
        self.model = self.build_model(spec)
        self.model_spec = spec
        self.model_parts(self.freeze, "module.freeze")
        for name, frozen in self.freeze.items():
            if frozen:
                getattr(self.model, name).requires_grad_(False)

    def check_init_spec(self, theirs: dict) -> None:
        """A one-line error when the `init_from` checkpoint came from another kind of module."""
        mine = type(self).__name__
        if theirs.get("module") not in (None, mine):
            raise UserError(f"init_from={self.init_from}: a {theirs['module']} checkpoint, but this "
                            f"run trains a {mine}; give a checkpoint of the same kind of module")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        spec = dict(self.model_spec)
        config = getattr(self.model, "config", None)
        if hasattr(config, "to_dict"):       # as it stands now (a curriculum may change rope_theta)
            spec["config"] = config.to_dict()
        checkpoint[checkpoints.MODEL_KEY] = spec

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        spec = checkpoints.model_spec(checkpoint, "checkpoint")
        if spec["module"] not in (None, type(self).__name__):
            raise UserError(f"checkpoint: written by {spec['module']}, but this run trains a "
                            f"{type(self).__name__}; give a checkpoint of the same experiment")
        if self.model is None:
            self.install(spec)
            return
        theirs = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items()
                  if k.startswith("model.")}
        ours = {k: tuple(v.shape) for k, v in self.state_dict().items() if k.startswith("model.")}
        wrong = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if wrong:
            mine = self.model_spec["config"]
            differ = [f"{k} {spec['config'][k]!r} vs {mine[k]!r}" for k in sorted(mine)
                      if k in spec["config"] and spec["config"][k] != mine[k]][:4]
            raise UserError(f"checkpoint: its model does not fit this run's ({wrong[0]}: "
                            f"{theirs.get(wrong[0])} vs {ours.get(wrong[0])}"
                            f"{'; ' + ', '.join(differ) if differ else ''}; checkpoint vs config); "
                            "give a checkpoint of the same experiment and model")

    def set_frozen(self, parts: list[str]) -> None:
        """Freeze `parts` of the model from now on and let the others learn (the curriculum's
        `freeze` key); parts that `module.freeze` names stay frozen. One process: the frozen
        parts stop taking gradients (their backward is skipped). Several: they keep them, since
        DDP waits for every parameter it was built with, and the gradients are dropped before
        each optimizer step. Either way the optimizer leaves them alone (no step, no decay)."""
        names = self.model_parts(parts, "curriculum freeze")
        self.phase_frozen = set(parts)
        if data_parallel():
            return
        for name in names:
            if not self.freeze.get(name):
                getattr(self.model, name).requires_grad_(name not in self.phase_frozen)

    def model_parts(self, given, what: str) -> list[str]:
        """The model's part names; one line naming `what` when `given` has a part it lacks."""
        names = [n for n, _ in self.model.named_children()]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise UserError(f"{what} has unknown parts {unknown}; valid: {', '.join(names)}")
        return names

    def set_rope_theta(self, theta: float) -> None:
        """Change the rotary base of the model's LM (the short-to-long curriculum's option)."""
        lm = getattr(self.model, "lm", self.model)
        if not hasattr(lm, "set_rope_theta"):
            raise UserError(f"{type(self).__name__}'s model has no rotary base to change; drop "
                            "rope_theta from the curriculum phases")
        lm.set_rope_theta(float(theta))

    # ---- training ---------------------------------------------------------------------------
    def on_train_batch_start(self, batch, batch_idx):
        self._step_start = time.perf_counter()

    def training_step(self, batch, batch_idx):
        loss, n_tokens = self.compute_loss(batch)
        # with several ranks the logged loss is their mean (= the loss of the global batch)
        self.log("train/loss", loss, prog_bar=True, sync_dist=self.trainer.world_size > 1)
        if self._step_start is not None:
            elapsed = max(time.perf_counter() - self._step_start, 1e-9)
            self.log("train/tokens_per_s", float(n_tokens) / elapsed)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def on_before_optimizer_step(self, optimizer):
        for name in self.phase_frozen:          # a curriculum's frozen parts: no step at all
            for p in getattr(self.model, name).parameters():
                p.grad = None
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float())
                                                         for g in grads]))
            self.log("train/grad_norm", norm)

    def configure_optimizers(self):
        total = self.sched_cfg["total_steps"]
        if total is None or int(total) <= 0:
            raise UserError(f"module.scheduler.total_steps={total}: set it to the number of "
                            "optimizer steps the schedule spans (e.g. the value of trainer.max_steps)")
        o = self.optim_cfg
        optimizer = torch.optim.AdamW(param_groups(self, o["weight_decay"]), lr=o["lr"],
                                      betas=tuple(o["betas"]), eps=o["eps"])
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(int(self.sched_cfg["warmup_steps"]), int(total),
                                 float(self.sched_cfg["min_lr_ratio"])))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1}}
