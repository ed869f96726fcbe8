"""End to end: `framelab fit experiment=sar` on the embedded images task learns to draw the class
it is asked for (class consistency far above the 1/40 chance of in-domain classes)."""
import os
import subprocess
import sys

import pytest
import torch

from framelab.metrics.features import render, train_classifier
from framelab.metrics.image_quality import features_and_predictions
from framelab.metrics.sar_eval import IN_DOMAIN_CLASSES, load_run


@pytest.mark.slow
def test_fit_sar_samples_are_recognisable(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "FRAMELAB_CACHE": str(tmp_path / "cache")}
    args = ["fit", "experiment=sar", "trainer.max_steps=250", "trainer.val_check_interval=250",
            "trainer.limit_val_batches=1", "data.samples.train=2048", "data.samples.val=64",
            "data.samples.test=32", "data.fit_samples=512",
            "callbacks.sample_images.every_n_steps=250", "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}"]
    res = subprocess.run([sys.executable, "-m", "framelab.cli", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    module, _ = load_run(tmp_path / "run" / "checkpoints" / "last.ckpt")
    torch.set_num_threads(1)
    # a quick evaluator (the benchmark's is trained longer): well above chance on real renders
    net, accuracy = train_classifier(samples=3000, epochs=4)
    assert accuracy > 0.3
    labels = torch.tensor(IN_DOMAIN_CLASSES).repeat(4)              # 160 images, 4 per class
    images = module.decode(module.generate(labels, "random-16-cosine", seed=0))
    _, predicted = features_and_predictions(net, images)
    consistency = float((predicted == labels).float().mean())
    real, real_labels = render("test", 160, 32)
    _, on_real = features_and_predictions(net, real)
    real_consistency = float((on_real == real_labels).float().mean())
    print(f"class consistency {consistency:.3f} (real images {real_consistency:.3f}, chance 0.025)")
    assert consistency > 0.2, (consistency, real_consistency)
