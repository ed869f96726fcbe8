"""The `framelab` command as a user runs it: training, run directories, resume, sweeps, errors."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from framelab.cli import main


def framelab(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "framelab.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow
def test_debug_fit_trains_writes_the_run_and_resumes_from_last(tmp_path):
    res = framelab("fit", "experiment=debug", "trainer.max_steps=30", "logger=csv", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = (tmp_path / "runs" / "debug").iterdir()
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "last.ckpt").exists()
    logged = rows(run / "metrics.csv")
    assert [int(r["step"]) for r in logged] == list(range(30))  # one row per step
    first = sum(float(r["train/loss"]) for r in logged[:5]) / 5
    last = sum(float(r["train/loss"]) for r in logged[-5:]) / 5
    assert last < first - 0.5, (first, last)
    assert all(float(r["train/grad_norm"]) > 0 and float(r["train/tokens_per_s"]) > 0
               for r in logged)

    res = framelab("fit", "experiment=debug", "ckpt_path=last", "trainer.max_steps=35", "logger=csv", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    newest = max((tmp_path / "runs" / "debug").iterdir())
    assert newest != run
    assert [int(r["step"]) for r in rows(newest / "metrics.csv")] == list(range(30, 35))


@pytest.mark.slow
def test_multirun_sweeps_into_numbered_directories(tmp_path):
    res = framelab("fit", "-m", "experiment=debug", "module.optim.lr=1e-3,3e-3", "trainer.max_steps=2",
                   "logger=csv", "callbacks=none", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (sweep,) = (tmp_path / "runs" / "debug" / "multirun").iterdir()
    lrs = sorted(float(rows(sweep / n / "metrics.csv")[0]["train/lr"]) * 10 for n in ("0", "1"))
    assert lrs == pytest.approx([1e-3, 3e-3])  # warmup 10 steps: step 0 runs at lr / 10


def test_cfg_job_prints_the_resolved_config(capsys):
    assert main(["fit", "--cfg", "job", "trainer.max_steps=7"]) == 0
    out = capsys.readouterr().out
    assert "name: videollm_sft" in out and "max_steps: 7" in out


@pytest.mark.parametrize("args, message", [
    (["experiment=nonexistent"], "unknown experiment 'nonexistent'; valid choices for "
                                 "experiment=: agent_rl, agent_sft, debug"),
    (["model=huge"], "valid choices for model=: qwen3-0.6b, qwen3-1.7b, qwen3-8b, small, tiny"),
    (["trainer.max_stesp=3"], "unknown config key 'trainer.max_stesp'; did you mean "
                              "trainer.max_steps"),
    (["paths.output_dir=/tmp/x"], "paths.output_dir is set when the run starts; "
                                  "hydra.run.dir=DIR picks the run's directory"),
    (["trainer.max_steps=abc"], "trainer.max_steps: expected an integer"),
    (["module.optim.lr=fast"], "module.optim.lr: expected a number"),
    (["name=???"], "required config value(s) not set: name"),
    (["ckpt_path=/no/such.ckpt"], "ckpt_path=/no/such.ckpt: no such file"),
    (["trainer.max_steps=[1,"], "cannot parse the overrides"),
])
def test_bad_command_lines_fail_with_one_line(capsys, args, message):
    assert main(["fit", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("framelab: error: ") and message in err, err


def test_unknown_command_and_help(capsys):
    assert main(["train"]) == 2
    assert "choose one of fit, validate, test, predict" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "framelab fit" in capsys.readouterr().out


def test_ckpt_path_last_without_runs_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "ckpt_path=last", "trainer.max_steps=1", "logger=none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("framelab: error: ckpt_path=last: no complete checkpoints/last.ckpt")


def test_tool_commands_report_user_errors_in_one_line(capsys, tmp_path):
    assert main(["data", "synth", "--task", "describe", "--out", str(tmp_path / "d"),
                 "--samples", "2", "--shards", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("framelab: error: "), err
    assert main(["bench", "nonexistent"]) == 2
    assert "unknown benchmark 'nonexistent'; choose one of" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_writes_sample_pngs_for_the_requested_classes(tmp_path):
    env_args = ["trainer.enable_progress_bar=false", "hydra.run.dir=runs/sar/one"]
    res = framelab("fit", "experiment=sar", "trainer.max_steps=2", *env_args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    res = framelab("predict", "experiment=sar", "ckpt_path=last", "module.predict.classes=[3,7]",
                   "module.predict.per_class=2", "module.predict.steps=[4]",
                   "trainer.enable_progress_bar=false", "hydra.run.dir=runs/sar/pred", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    pngs = sorted(p.name for p in (tmp_path / "runs/sar/pred/samples").rglob("class*.png"))
    assert [n[:7] for n in pngs] == ["class03", "class03", "class07", "class07"]
