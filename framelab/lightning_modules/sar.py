"""SARGenModule: class-conditional image generation by set-autoregressive modelling (SAR).

Training (per batch): draw one set partition from `partitions` (a weighted mix of
`order-K-interval` names, K possibly a range), drop labels to the null class with probability
`label_dropout` (for classifier-free guidance), run the Fully Masked Transformer teacher-forced
over every set at once, and take the cross-entropy of every token (fused linear-CE from hidden
states). The partition and label-dropout draws come from a generator seeded by (seed, step), so a
resumed run draws exactly what the uninterrupted run would have.

Validation: `val/loss` is the mean loss over the fixed `val_partitions` (drawn from a fixed seed).

The model's codebook size, grid and number of classes default to the datamodule's (`null` in the
config): the model is built through the shared lifecycle (`FramelabModule`: in `setup()` once the
datamodule is known, or at once when the config gives them), and its resolved config is stored in
every checkpoint, so `SARGenModule.load_from_checkpoint(path)` rebuilds it without data.

Prediction: `predict_step` generates images for the batch's requests (see `SampleRequests`:
classes x per_class x step counts, from `predict:`) -- or, given an ordinary data batch, for the
batch's labels -- decodes them with the datamodule and returns them for the PNG writer callback.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from framelab.errors import UserError
from framelab.kernels import linear_cross_entropy
from framelab.lightning_modules.base import FramelabModule
from framelab.models.sar import (FMTConfig, FullyMaskedTransformer, PartitionSampler,
                                 SamplingConfig, generate, make_partition, parse)

DATA_KEYS = ("codebook_size", "grid", "num_classes")


def partition_name(order: str, steps, interval: str) -> str:
    return f"{order}-{steps}-{interval}"


class SampleRequests(Dataset):
    """One item per (steps, class, copy): what `framelab predict experiment=sar` generates."""

    def __init__(self, classes, per_class: int, steps, order: str, interval: str, seed: int):
        steps = steps if isinstance(steps, (list, tuple)) else [steps]
        for k in steps:
            parse(partition_name(order, k, interval))      # a bad name fails here, in one line
        self.items = [(str(k), int(c), i) for k in steps for c in classes for i in range(per_class)]
        self.order, self.interval, self.seed = order, interval, seed

    def __len__(self):
        return len(self.items)

    def __getitem__(self, idx):
        k, c, i = self.items[idx]
        return {"label": c, "steps": k, "copy": i, "index": idx}


class SARGenModule(FramelabModule):
    def __init__(self, model: dict | None = None, partitions: list | None = None,
                 custom_order: list[int] | None = None, label_dropout: float = 0.1,
                 val_partitions: list[str] | None = None, sampling: dict | None = None,
                 predict: dict | None = None, seed: int = 0, loss_chunk_size: int = 4096,
                 optim: dict | None = None, scheduler: dict | None = None):
        super().__init__(optim, scheduler)
        self.save_hyperparameters()
        if not 0.0 <= label_dropout < 1.0:
            raise UserError(f"module.label_dropout={label_dropout}: must lie in [0, 1)")
        self.model_cfg = dict(model or {})
        self.sampler = PartitionSampler(partitions or ["random-1..N-random"], custom_order)
        self.custom_order = custom_order
        self.label_dropout, self.seed, self.loss_chunk_size = label_dropout, seed, loss_chunk_size
        self.val_partitions = [parse(p) for p in (val_partitions or ["raster-N-fixed"])]
        self.sampling = SamplingConfig(**(sampling or {}))
        self.predict_cfg = {"classes": [0], "per_class": 4, "steps": [16], "order": "random",
                            "interval": "cosine", "seed": 0, "batch_size": 64, **(predict or {})}
        self._decoder = None        # the datamodule's decode(tokens) -> images, kept from setup()
        if all(self.model_cfg.get(k) is not None for k in DATA_KEYS):
            self.install(self.model_config(None, None))   # the config says everything: build now

    # ---- model ------------------------------------------------------------------------------
    def on_datamodule(self, dm) -> None:
        if hasattr(dm, "decode"):           # kept, so predicting after fit still decodes
            self._decoder = dm.decode

    def model_config(self, dm, init_spec: dict | None) -> dict:
        """The FMT config, with codebook size, grid and classes from the datamodule where null."""
        cfg = dict(self.model_cfg)
        for k in DATA_KEYS:
            if cfg.get(k) is None:
                if dm is None or not hasattr(dm, k):
                    raise UserError("module.model.codebook_size / grid / num_classes are null and "
                                    "the datamodule does not provide them; set them, or use "
                                    "data=images")
                cfg[k] = list(getattr(dm, k)) if k == "grid" else int(getattr(dm, k))
        config = FMTConfig.from_dict({k: v for k, v in cfg.items() if v is not None})
        return {"config": config.to_dict(), "tokens": {}}

    def build_model(self, spec: dict) -> FullyMaskedTransformer:
        self.fmt_config = FMTConfig.from_dict(spec["config"])
        return FullyMaskedTransformer(self.fmt_config)

    # ---- training ---------------------------------------------------------------------------
    def _generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + step)

    def loss_for(self, tokens, labels, partition) -> torch.Tensor:
        hidden, targets = self.model(tokens, labels, partition)
        return linear_cross_entropy(hidden, self.model.head.weight, targets,
                                    chunk_size=self.loss_chunk_size)

    def compute_loss(self, batch):
        tokens, labels = batch["tokens"], batch["labels"]
        if tokens.shape[0] == 0:                     # a step whose samples were all corrupt
            return self.model.head.weight.sum() * 0.0, 0
        g = self._generator(self.global_step)
        partition = self.sampler.sample(tokens.shape[1], tokens.shape[0], g)
        drop = torch.rand(labels.shape, generator=g) < self.label_dropout
        labels = torch.where(drop.to(labels.device), self.model.null_class, labels)
        return self.loss_for(tokens, labels, partition), tokens.numel()

    def validation_step(self, batch, batch_idx):
        tokens, labels = batch["tokens"], batch["labels"]
        if tokens.shape[0] == 0:
            return None
        g = torch.Generator().manual_seed(self.seed + batch_idx)
        losses = [self.loss_for(tokens, labels, make_partition(p, tokens.shape[1], tokens.shape[0],
                                                                g, self.custom_order))
                  for p in self.val_partitions]
        loss = torch.stack(losses).mean()
        self.log("val/loss", loss, prog_bar=True, batch_size=tokens.shape[0])
        for p, value in zip(self.val_partitions, losses):
            self.log(f"val/loss_{p.name}", value, batch_size=tokens.shape[0])
        return loss

    test_step = validation_step

    # ---- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, labels: torch.Tensor, partition: str, seed: int = 0,
                 sampling: SamplingConfig | None = None, use_cache: bool = True) -> torch.Tensor:
        """Token grids (B, N) for `labels` under a partition name such as 'random-16-cosine'."""
        device = self.model.head.weight.device
        g = torch.Generator(device=device).manual_seed(seed)
        labels = labels.to(device)
        p = make_partition(partition, self.fmt_config.num_tokens, labels.shape[0], g,
                           self.custom_order, device)
        was_training = self.model.training
        self.model.eval()
        try:
            return generate(self.model, labels, p, sampling or self.sampling, g, use_cache)
        finally:
            self.model.train(was_training)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] through the datamodule's image tokenizer."""
        decoder = getattr(self.current_datamodule(), "decode", None) or self._decoder
        if decoder is None:
            raise UserError("decoding tokens to images needs the datamodule's image tokenizer "
                            "(data=images)")
        return decoder(tokens.cpu())

    def predict_dataloader(self):
        c = self.predict_cfg
        requests = SampleRequests(c["classes"], c["per_class"], c["steps"], c["order"],
                                  c["interval"], c["seed"])
        return DataLoader(requests, batch_size=c["batch_size"], shuffle=False)

    def predict_step(self, batch, batch_idx):
        c = self.predict_cfg
        if "steps" in batch:                          # requests from SampleRequests
            labels, steps = batch["label"], batch["steps"]
        else:                                         # an ordinary data batch: its labels
            labels, steps = batch["labels"], [str(c["steps"][0])] * len(batch["labels"])
        out = {"images": [], "labels": [], "partition": [], "index": []}
        for k in sorted(set(steps)):
            rows = torch.tensor([i for i, s in enumerate(steps) if s == k])
            name = partition_name(c["order"], k, c["interval"])
            tokens = self.generate(labels[rows], name, seed=c["seed"] * 7919 + batch_idx)
            out["images"].append(self.decode(tokens))
            out["labels"] += labels[rows].tolist()
            out["partition"] += [name] * len(rows)
            out["index"] += (batch["index"][rows] if "index" in batch
                             else rows + batch_idx * len(steps)).tolist()
        out["images"] = torch.cat(out["images"])
        return out
