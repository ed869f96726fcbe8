"""Sweeps: a two-trial Optuna study (Hydra's Optuna sweeper) on CPU."""
import os
import subprocess
import sys

import pytest
import yaml


@pytest.mark.slow
def test_two_trial_optuna_study_completes(tmp_path):
    cmd = [sys.executable, "-m", "framelab.cli", "fit", "experiment=debug", "hparams_search=debug_optuna",
           "hydra.sweeper.n_trials=2", "trainer.max_steps=4", "trainer.val_check_interval=2",
           "trainer.limit_val_batches=1", "logger=csv", "callbacks=none",
           "trainer.enable_progress_bar=false"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    (study,) = (tmp_path / "runs" / "debug" / "multirun").iterdir()
    assert sorted(p.name for p in study.iterdir() if p.is_dir()) == ["0", "1"]
    results = yaml.safe_load((study / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"module.optim.lr", "module.scheduler.warmup_steps",
                                           "module.optim.weight_decay"}
    assert 0 < results["best_value"] < 7  # a validation loss, below ln(512) ≈ 6.24 + noise
    for trial in ("0", "1"):
        lr = yaml.safe_load((study / trial / "config.yaml").read_text())["module"]["optim"]["lr"]
        assert 1e-4 <= lr <= 3e-2
