"""Sample grids during training: every `every_n_steps` optimizer steps, generate images for fixed
classes under each configured partition and log them to TensorBoard as one `make_grid` per
partition (`samples/<order-K-interval>`; one row per class, `per_class` images in a row).

Works with any module that has `generate(labels, partition, seed) -> tokens` and
`decode(tokens) -> images float (B, 3, H, W) in [0, 1]` (SARGenModule). The EMA weights are used
when an `EMA` callback is present. The seed is fixed, so successive grids show the same noise.
Loggers other than TensorBoard are skipped (CSV cannot hold images).
"""
from __future__ import annotations

import logging

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid

from framelab.callbacks.ema import EMA
from framelab.errors import UserError
from framelab.models.sar import parse

log = logging.getLogger(__name__)


class SampleImages(Callback):
    def __init__(self, every_n_steps: int = 200, classes: list[int] | None = None,
                 per_class: int = 4, partitions: list[str] | None = None, seed: int = 0,
                 at_end: bool = True):
        if every_n_steps < 1:
            raise UserError(f"callbacks.sample_images.every_n_steps={every_n_steps}: must be >= 1")
        self.every_n_steps, self.per_class, self.seed, self.at_end = every_n_steps, per_class, seed, at_end
        self.classes = list(classes if classes is not None else range(8))
        self.partitions = [parse(p).name for p in (partitions or ["random-16-cosine"])]
        self.last_grids: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def make_grids(self, trainer, pl_module) -> dict[str, torch.Tensor]:
        labels = torch.tensor(self.classes).repeat_interleave(self.per_class)
        ema = EMA.find(trainer)
        grids = {}
        for name in self.partitions:
            if ema is not None:
                with ema.swapped(pl_module):
                    tokens = pl_module.generate(labels, name, seed=self.seed)
            else:
                tokens = pl_module.generate(labels, name, seed=self.seed)
            images = pl_module.decode(tokens)
            grids[name] = make_grid(images, nrow=self.per_class, padding=1, pad_value=1.0)
        return grids

    def log_grids(self, trainer, pl_module) -> None:
        self.last_grids = self.make_grids(trainer, pl_module)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, grid in self.last_grids.items():
                    logger.experiment.add_image(f"samples/{name}", grid, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and trainer.is_global_zero:
            self.log_grids(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.at_end and trainer.is_global_zero and trainer.global_step % self.every_n_steps:
            self.log_grids(trainer, pl_module)
