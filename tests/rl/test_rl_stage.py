"""The rl and opd stages of VideoLLMModule as a user runs them: `framelab fit experiment=videollm_rl`
resumes exactly after a SIGTERM (same rollouts, same losses), opd against the policy itself under
the same prompt has nothing to learn, and bad settings are one line."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framelab.errors import UserError
from framelab.lightning_modules.policy import policy_config

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["logger=csv", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
         "data.samples={train:48,val:8,test:8,ood:0}", "data.max_tokens=1024",
         "module.rl.prompts=2", "module.rl.group_size=4", "module.rl.max_new_tokens=4",
         "trainer.limit_val_batches=0", "callbacks.model_checkpoint.every_n_train_steps=2"]


def run(tmp_path, args, background=False):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FRAMELAB_CACHE": str(tmp_path.parent / "cache"),
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "framelab.cli", "fit", *SMALL, *args]
    if background:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]


def metrics(run_dir: Path, key: str) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


@pytest.mark.slow
def test_rl_resumes_exactly_after_sigterm(tmp_path):
    args = ["experiment=videollm_rl", "trainer.max_steps=6",
            "~module.rl.rewards",
            "+module.rl.rewards={vowels: {fn: 'tests.rl.toy_rewards:vowel_share'}}",
            "module.rl.dynamic_sampling=false"]
    run(tmp_path, [*args, "hydra.run.dir=ref"])
    keys = ("train/loss", "train/rl/reward_mean", "train/rl/entropy")
    ref = {k: metrics(tmp_path / "ref", k) for k in keys}
    assert sorted(ref["train/loss"]) == list(range(6))
    assert len(set(ref["train/rl/reward_mean"].values())) > 1       # rollouts differ by step
    assert any(v != 0 for v in ref["train/loss"].values())
    proc = run(tmp_path, [*args, "hydra.run.dir=a"], background=True)
    while not (tmp_path / "a" / "checkpoints" / "step0000002.ckpt").exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "got SIGTERM" in out, out[-3000:]
    run(tmp_path, [*args, "hydra.run.dir=b", f"ckpt_path={tmp_path / 'a/checkpoints/last.ckpt'}"])
    for key in keys:
        first, second = metrics(tmp_path / "a", key), metrics(tmp_path / "b", key)
        assert 2 <= max(first) < 5 and sorted(second) == list(range(max(first) + 1, 6)), key
        assert {**first, **second} == ref[key], key        # same rollouts, same updates


@pytest.mark.slow
def test_opd_from_itself_under_the_same_prompt_has_nothing_to_learn(tmp_path):
    run(tmp_path, ["experiment=videollm_opd", "trainer.max_steps=2", "module.opd.teacher=null",
                   "module.opd.teacher_prompt=same", "hydra.run.dir=same"])
    assert set(metrics(tmp_path / "same", "train/rl/teacher_kl").values()) == {0.0}
    assert set(metrics(tmp_path / "same", "train/loss").values()) == {0.0}
    assert all(v < 1e-4 for v in metrics(tmp_path / "same", "train/rl/behaviour_logp_diff").values())
    # `framelab bench passk` reads the run folder back: greedy, sampled and pass@G accuracy
    ckpt, out = tmp_path / "same/checkpoints/last.ckpt", tmp_path / "passk.json"
    res = bench(tmp_path, ["passk", "--ckpt", str(ckpt), "--questions", "6", "--group", "3",
                           "--json", str(out)])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    row = json.loads(out.read_text())["rows"][0]
    assert row["questions"] == 6 and row["chance_pass@3"] == pytest.approx(1 - 0.75 ** 3, abs=1e-3)
    assert 0 <= row["sampled"] <= row["pass@3"] <= 1 and 0 <= row["greedy"] <= 1
    res = bench(tmp_path, ["passk", "--ckpt", str(tmp_path / "nowhere.ckpt")])
    assert res.returncode == 2 and "framelab run folder" in res.stderr, res.stderr[-2000:]
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def bench(tmp_path, args):
    env = {**os.environ, "FRAMELAB_CACHE": str(tmp_path.parent / "cache")}
    return subprocess.run([sys.executable, "-m", "framelab.cli", "bench", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)


def test_bad_policy_settings_are_one_line():
    for rl, opd, words in (({"groups": 4}, None, "unknown keys ['groups']"),
                           ({"group_size": 0}, None, "group_size=0"),
                           (None, {"form": "kl"}, "form='kl'"),
                           (None, {"teacher_prompt": "cue"}, "teacher_prompt='cue'")):
        with pytest.raises(UserError) as exc:
            policy_config(rl, opd)
        assert words in str(exc.value) and "\n" not in str(exc.value)
