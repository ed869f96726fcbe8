"""End to end: `framelab fit experiment=sar` on the embedded images task learns to draw the class
it is asked for: class consistency far above the 1/40 chance of in-domain classes.
Class conditioning is learned late (after the background/foreground layout): 800 steps are
needed, about 2 minutes on one free CPU core.

The judge here is a small classifier over VQ token grids, trained in seconds on the run's own
training tokens (the image-feature classifier of `framelab.evaluation.features` takes about a
minute to train; `framelab bench sar` reports class consistency with that one)."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from framelab.benchmarks._sar_eval import IN_DOMAIN_CLASSES, load_run


class TokenClassifier(nn.Module):
    def __init__(self, codebook: int, grid, classes: int = 48, width: int = 64):
        super().__init__()
        self.grid = grid
        self.embed = nn.Embedding(codebook, width)
        self.convs = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
                                   nn.Conv2d(width, width, 3, padding=1), nn.GELU())
        self.out = nn.Linear(width, classes)

    def forward(self, tokens):
        x = self.embed(tokens).view(len(tokens), *self.grid, -1).permute(0, 3, 1, 2)
        return self.out(self.convs(x).amax((2, 3)))


def token_classifier(datamodule, steps: int = 400):
    torch.manual_seed(0)
    net = TokenClassifier(datamodule.codebook_size, datamodule.grid)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    done = 0
    while done < steps:
        for batch in datamodule.train_dataloader():
            loss = F.cross_entropy(net(batch["tokens"]), batch["labels"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    tokens, labels = zip(*[(b["tokens"], b["labels"]) for b in datamodule.val_dataloader()])
    with torch.no_grad():
        accuracy = (net(torch.cat(tokens)).argmax(-1) == torch.cat(labels)).float().mean()
    return net.eval(), float(accuracy)


@pytest.mark.slow
def test_fit_sar_samples_are_recognisable(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "FRAMELAB_CACHE": str(tmp_path / "cache")}
    args = ["fit", "experiment=sar", "trainer.max_steps=800", "trainer.val_check_interval=800",
            "trainer.limit_val_batches=1", "data.samples.train=2048", "data.samples.val=128",
            "data.samples.test=32", "data.fit_samples=512",
            "callbacks.sample_images.every_n_steps=800", "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}"]
    res = subprocess.run([sys.executable, "-m", "framelab.cli", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    torch.set_num_threads(1)
    module, datamodule = load_run(tmp_path / "run" / "checkpoints" / "last.ckpt")
    judge, accuracy = token_classifier(datamodule)
    assert accuracy > 0.8, accuracy                               # it can tell the classes apart
    labels = torch.tensor(IN_DOMAIN_CLASSES).repeat(4)            # 160 images, 4 per class
    tokens = module.generate(labels, "random-16-cosine", seed=0)
    with torch.no_grad():
        consistency = float((judge(tokens).argmax(-1) == labels).float().mean())
    print(f"class consistency {consistency:.3f} (judge accuracy on real {accuracy:.3f}, "
          f"chance {1 / len(IN_DOMAIN_CLASSES):.3f})")
    assert consistency > 0.15, consistency                        # 6x chance
