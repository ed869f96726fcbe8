"""FID, KID, precision/recall and class consistency of generated images, in local features.

- FID and KID: torchmetrics' `FrechetInceptionDistance` / `KernelInceptionDistance` with the
  feature extractor of `framelab.evaluation.features` passed as `feature=` (no Inception, no
  download). Images are float (N, 3, H, W) in [0, 1]. Numbers are comparable only within one
  feature network (same image size), never with ImageNet FIDs.
- Precision / recall (Kynkäänniemi et al., 2019), k = 3: each real feature gets a ball whose radius
  is the distance to its k-th nearest real neighbour; precision is the fraction of generated
  features inside some real ball, recall the fraction of real features inside some generated
  ball (radii from the generated set).
- Class consistency: the fraction of generated images the classifier assigns to the class they
  were generated for. Chance is 1 / (number of classes drawn).
"""
from __future__ import annotations

import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from framelab.evaluation.features import ShapeClassifier, to_float


def _kth_radius(feats: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(feats, feats)
    return d.kthvalue(k + 1, dim=1).values   # +1: the point itself is at distance 0


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    real, fake = real.double(), fake.double()
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = torch.cdist(fake, real)                                   # (n_fake, n_real)
    precision = (d <= r_real.unsqueeze(0)).any(1).float().mean()
    recall = (d.t() <= r_fake.unsqueeze(0)).any(1).float().mean()
    return float(precision), float(recall)


@torch.no_grad()
def features_and_predictions(net: ShapeClassifier, images, batch: int = 256):
    feats, preds = [], []
    x = to_float(images)
    for i in range(0, len(x), batch):
        f = net(x[i:i + batch])
        feats.append(f)
        preds.append(net.classify(f).argmax(-1))
    return torch.cat(feats), torch.cat(preds)


class ImageQuality:
    """Holds the real reference set's features once; `score(fake, labels)` for each configuration."""

    def __init__(self, net: ShapeClassifier, real_images, k: int = 3, kid_subset: int = 100):
        self.net, self.k, self.kid_subset = net.eval(), k, kid_subset
        self.real = to_float(real_images)
        self.real_feats, _ = features_and_predictions(net, self.real)

    @torch.no_grad()
    def score(self, fake_images, labels: torch.Tensor) -> dict:
        fake = to_float(fake_images)
        if len(fake) < 2 or len(self.real) < 2:
            raise ValueError("image metrics need at least two real and two generated images")
        fid = FrechetInceptionDistance(feature=self.net, normalize=True)
        subset = min(self.kid_subset, len(fake), len(self.real))
        kid = KernelInceptionDistance(feature=self.net, subsets=20, subset_size=subset,
                                      normalize=True)
        for metric in (fid, kid):
            metric.update(self.real, real=True)
            metric.update(fake, real=False)
        kid_mean, kid_std = kid.compute()
        feats, preds = features_and_predictions(self.net, fake)
        precision, recall = precision_recall(self.real_feats, feats, self.k)
        return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std),
                "precision": precision, "recall": recall,
                "class_consistency": float((preds == labels.to(preds.device)).float().mean()),
                "n": len(fake)}
