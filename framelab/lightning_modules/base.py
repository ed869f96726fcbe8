"""The shared base of every framelab LightningModule: optimiser, schedule, logging.

- AdamW with weight decay on matrices only (no decay on norms, biases, embeddings).
- Linear warmup then cosine decay to `min_lr_ratio` × lr over `scheduler.total_steps` (its own
  config key: the horizon is never taken silently from the trainer).
- Logs `train/loss`, `train/lr`, `train/grad_norm` (before clipping; clipping is the trainer's
  `gradient_clip_val`) and `train/tokens_per_s`.
Subclasses implement `compute_loss(batch) -> (loss, n_tokens)` and build `self.model`.
"""
from __future__ import annotations

import math
import time

import lightning as L
import torch
from torch import nn

from framelab.errors import UserError
from framelab.models.config import ModelConfig, VisionConfig, preset


def build_model_config(cfg: dict) -> ModelConfig:
    """ModelConfig from the `model` config group: a preset plus the keys that are not null."""
    cfg = dict(cfg)
    name = cfg.pop("preset", "tiny")
    for key in ("attn_backend", "kernels"):
        cfg.pop(key, None)
    overrides = {k: v for k, v in cfg.items() if v is not None}
    if "mrope_section" in overrides:
        overrides["mrope_section"] = tuple(overrides["mrope_section"])
    if isinstance(overrides.get("vision"), dict):
        overrides["vision"] = VisionConfig(**overrides["vision"])
    try:
        return preset(name, **overrides)
    except (TypeError, ValueError) as exc:
        raise UserError(f"model config: {exc}") from exc


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
    def __init__(self, optim: dict | None = None, scheduler: dict | None = None):
        super().__init__()
        self.optim_cfg = {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1,
                          **(optim or {})}
        self.sched_cfg = {"warmup_steps": 0, "total_steps": None, "min_lr_ratio": 0.1,
                          **(scheduler or {})}
        self._step_start: float | None = None

    # ---- subclasses -------------------------------------------------------------------------
    def compute_loss(self, batch) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

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
