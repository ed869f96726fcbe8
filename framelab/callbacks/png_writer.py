"""Write the images `predict_step` returns as PNG files (`framelab predict experiment=sar`).

`predict_step` returns {"images": float (B, 3, H, W) in [0, 1], "labels": [..], "partition": [..],
"index": [..]}; each image goes to `<out_dir>/<partition>/class<label>_<index>.png`, and every
partition folder also gets `grid.png` (one row per class) once prediction ends.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torchvision.io import write_png
from torchvision.utils import make_grid

log = logging.getLogger(__name__)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu()


class PNGWriter(BasePredictionWriter):
    def __init__(self, out_dir: str, upscale: int = 4):
        super().__init__(write_interval="batch")
        self.out_dir, self.upscale = Path(out_dir), upscale
        self._by_partition: dict[str, list] = defaultdict(list)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        for image, label, name, index in zip(prediction["images"], prediction["labels"],
                                             prediction["partition"], prediction["index"]):
            folder = self.out_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            big = torch.nn.functional.interpolate(image[None], scale_factor=self.upscale,
                                                  mode="nearest")[0]
            write_png(to_uint8(big), str(folder / f"class{int(label):02d}_{int(index):05d}.png"))
            self._by_partition[name].append((int(label), int(index), image.cpu()))

    def on_predict_end(self, trainer, pl_module) -> None:
        for name, items in self._by_partition.items():
            items.sort(key=lambda t: (t[0], t[1]))
            per_row = max(sum(1 for t in items if t[0] == items[0][0]), 1)
            grid = make_grid(torch.stack([t[2] for t in items]), nrow=per_row, padding=1,
                             pad_value=1.0)
            write_png(to_uint8(grid), str(self.out_dir / name / "grid.png"))
        if self._by_partition:
            log.warning("wrote %d sample images to %s",
                        sum(len(v) for v in self._by_partition.values()), self.out_dir)
        self._by_partition.clear()
