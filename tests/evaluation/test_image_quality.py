"""Image metrics: precision/recall on constructed feature sets, FID/KID through torchmetrics with the
local feature network, class consistency, and a feature classifier that learns."""
import pytest
import torch

from framelab.evaluation.features import ShapeClassifier, load_or_train, render, to_float, train_classifier
from framelab.evaluation.image_quality import ImageQuality, precision_recall


pytestmark = pytest.mark.usefixtures("one_thread")


def test_precision_recall_on_known_sets():
    g = torch.Generator().manual_seed(0)
    left = torch.randn(200, 4, generator=g)
    right = torch.randn(200, 4, generator=g) + 100.0          # a second, far-away mode
    real = torch.cat([left, right])
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    p, r = precision_recall(real, left + 0.01)                  # covers only one mode
    assert p == 1.0 and 0.45 < r < 0.55
    p, r = precision_recall(real, torch.randn(50, 4, generator=g) - 100.0)
    assert p == 0.0 and r == 0.0


def test_fid_kid_and_class_consistency():
    torch.manual_seed(0)
    net = ShapeClassifier().eval()
    real, _ = render("test", 120, 32)
    quality = ImageQuality(net, real, kid_subset=50)
    same = quality.score(real, torch.zeros(120, dtype=torch.long))
    assert abs(same["fid"]) < 1e-3 and abs(same["kid"]) < 1e-3
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    noise = torch.rand(120, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    other = quality.score(noise, torch.zeros(120, dtype=torch.long))
    assert other["fid"] > 1.0 and other["kid"] > same["kid"]
    with torch.no_grad():
        predicted = net.logits(to_float(real)).argmax(-1)
    labels = predicted.clone()
    labels[:30] = (labels[:30] + 1) % 48                         # a quarter disagree
    assert quality.score(real, labels)["class_consistency"] == pytest.approx(0.75)


def test_feature_classifier_learns_and_is_cached(tmp_path):
    net, accuracy = train_classifier(samples=960, epochs=3, batch=32)
    assert accuracy > 0.15                                       # chance: 1/48
    first = load_or_train(tmp_path, 32, samples=64, epochs=1)
    files = list(tmp_path.glob("sar-features-32px-*.pt"))
    assert len(files) == 1
    marked = {k: torch.full_like(v, 0.5) for k, v in first.state_dict().items()}
    torch.save(marked, files[0])
    again = load_or_train(tmp_path, 32, samples=64, epochs=1)   # read from the cache, not retrained
    assert all(torch.equal(v, marked[k]) for k, v in again.state_dict().items())
