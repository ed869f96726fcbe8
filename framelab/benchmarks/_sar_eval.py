"""What `framelab bench sar` needs to score a trained SAR generator (FID, KID, precision/recall,
class consistency from `framelab.evaluation.image_quality`) under several partitions, against
rendered test images of the embedded world: loading a run, generating, scoring.

- `load_run(ckpt)`: the SARGenModule of a checkpoint (EMA weights when the checkpoint has them)
  and the datamodule of its run (from `<run dir>/config.yaml`), whose tokenizer decodes tokens.
- `Evaluator`: the feature classifier (trained once, cached) and the real reference images;
  `evaluate(module, partition)` generates `n` images for class labels drawn uniformly from the
  in-domain classes (those the generator was trained on) with a fixed seed, and scores them.
  Chance class consistency is 1 / (number of in-domain classes) = 1/40.
- `reconstruction_row`: the same metrics for the VQ reconstructions of real test images -- the
  best any generator over these tokens can do (its floor FID).
"""
from __future__ import annotations

from pathlib import Path

import torch

from framelab.callbacks.ema import ema_state
from framelab.errors import UserError
from framelab.evaluation.features import load_or_train, render
from framelab.evaluation.image_quality import ImageQuality
from framelab.world.vocab import IN_DOMAIN_PAIRS, class_id

IN_DOMAIN_CLASSES = sorted(class_id(s, c) for s, c in IN_DOMAIN_PAIRS)


def load_run(ckpt: str | Path, use_ema: bool = True):
    """(SARGenModule in eval mode with the EMA weights if present and the run's datamodule
    attached for decoding, that datamodule)."""
    from framelab.checkpoints import inspect
    from framelab.lightning_modules.sar import SARGenModule
    from framelab.run_folder import load_datamodule
    from framelab.safe_load import load_torch

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise UserError(f"checkpoint {ckpt} not found; give a .ckpt of `framelab fit experiment=sar`")
    inspect(ckpt, f"--ckpt {ckpt}")
    datamodule = load_datamodule(ckpt.parent.parent / "config.yaml", f"--ckpt {ckpt}")
    module = SARGenModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    if use_ema:
        shadow = ema_state(load_torch(ckpt, f"--ckpt {ckpt}"))
        if shadow is not None:
            module.load_state_dict(shadow)
    datamodule.setup("predict")
    module.attach_datamodule(datamodule)
    return module.eval(), datamodule


class Evaluator:
    def __init__(self, image_size: int = 32, n: int = 512, cache_dir: str | Path = "data_cache",
                 seed: int = 0, world_seed: int = 0):
        self.n, self.seed, self.image_size = n, seed, image_size
        self.net = load_or_train(cache_dir, image_size)
        real, self.real_labels = render("test", n, image_size, world_seed)
        self.real = real
        self.quality = ImageQuality(self.net, real)
        g = torch.Generator().manual_seed(seed)
        pick = torch.randint(0, len(IN_DOMAIN_CLASSES), (n,), generator=g)
        self.labels = torch.tensor(IN_DOMAIN_CLASSES)[pick]

    @torch.no_grad()
    def images(self, module, partition: str, batch: int = 128) -> torch.Tensor:
        out = []
        for i in range(0, self.n, batch):
            tokens = module.generate(self.labels[i:i + batch], partition, seed=self.seed + i)
            out.append(module.decode(tokens))
        return torch.cat(out)

    def evaluate(self, module, partition: str) -> dict:
        return self.quality.score(self.images(module, partition), self.labels)

    def reconstruction_row(self, datamodule) -> dict:
        """Metrics of decode(encode(real test images)) against the real images themselves."""
        tokens = datamodule.image_tokenizer.encode(self.real)
        return self.quality.score(datamodule.decode(tokens), self.real_labels)
