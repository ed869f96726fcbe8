"""CausalLMModule: the backbone trained as a plain next-token language model (experiment `debug`).

Batches hold `input_ids` (B, S) and unshifted `labels` (B, S) with -100 where no loss applies;
the loss is the fused linear-cross-entropy from hidden states (the logits never exist whole).
Its model needs nothing from the data, so it is built at once (or in `setup()` under `init_from`).
"""
from __future__ import annotations

import torch

from framelab.kernels import AttentionSpec, linear_cross_entropy
from framelab.lightning_modules.base import FramelabModule, build_model_config
from framelab.models.config import ModelConfig
from framelab.models.transformer import DecoderLM


class CausalLMModule(FramelabModule):
    def __init__(self, model: dict, optim: dict | None = None, scheduler: dict | None = None,
                 loss_chunk_size: int = 4096, init_from: str | None = None):
        super().__init__(optim, scheduler, init_from)
        self.save_hyperparameters()
        self.model_cfg = dict(model)
        self.loss_chunk_size = loss_chunk_size
        if init_from is None:              # the config says everything: build now
            self.install(self.model_config(None, None))

    def model_config(self, datamodule, init_spec: dict | None) -> dict:
        return {"config": build_model_config(self.model_cfg).to_dict(), "tokens": {}}

    def build_model(self, spec: dict) -> DecoderLM:
        return DecoderLM(ModelConfig.from_dict(spec["config"]))

    def forward(self, input_ids, cu_seqlens=None):
        return self.model(input_ids, spec=AttentionSpec(causal=True, cu_seqlens=cu_seqlens))

    def compute_loss(self, batch):
        ids, labels = batch["input_ids"], batch["labels"]
        spec = AttentionSpec(causal=True, cu_seqlens=batch.get("cu_seqlens"))
        hidden = self.model.hidden_states(ids, spec=spec)
        targets = labels[:, 1:]
        loss = linear_cross_entropy(hidden[:, :-1], self.model.output_weight, targets,
                                    chunk_size=self.loss_chunk_size)
        return loss, int((targets != -100).sum())

    def validation_step(self, batch, batch_idx):
        ids, labels = batch["input_ids"], batch["labels"]
        loss, n = self.compute_loss(batch)
        logits = self.model(ids).logits[:, :-1]
        targets = labels[:, 1:]
        keep = targets != -100
        accuracy = (logits.argmax(-1)[keep] == targets[keep]).float().mean()
        self.log("val/loss", loss, prog_bar=True, batch_size=ids.shape[0])
        self.log("val/accuracy", accuracy, batch_size=ids.shape[0])
        return loss

    test_step = validation_step

    def predict_step(self, batch, batch_idx):
        return self.model(batch["input_ids"]).logits.argmax(-1)
