"""Every experiment file composes and trains for two steps (then validates one batch) through the
`framelab fit` command, so a broken experiment cannot land. New files in configs/experiment/ are
picked up on their own; the overrides below only shrink the data (generated into a shared cache)."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from framelab.cli import main
from framelab.config_check import config_dir, group_choices

EXPERIMENTS = group_choices("experiment")
TWO_STEPS = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
             "trainer.log_every_n_steps=1", "logger=csv"]
SMALL_SAMPLES = "data.samples={train:32,val:8,test:8,ood:0}"


def composed(name: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("fit", overrides=[f"experiment={name}"])


def small_data(name: str, real_shards: Path, teacher=None) -> list[str]:
    """Overrides that keep the experiment's data small: fewer generated samples, and a real-data
    experiment (no world tasks, data_dir to be given) pointed at a few world shards. A distillation
    experiment rolls out fewer, shorter replies; one that needs a teacher checkpoint gets
    `teacher()` (a tiny one trained here)."""
    data, out = composed(name).data, []
    if "samples" in data:
        out.append(SMALL_SAMPLES)
    if "tasks" in data and not data.tasks and not data.get("data_dir"):   # reads data_dir only
        future = data.get("load_future")          # shards whose samples carry future frames
        out.append(f"data.data_dir={real_shards.parent / 'real_future' if future else real_shards}")
        if future:                                # 12 future frames a sample: fewer pixels
            out.append("data.image_size=56")
    if "fit_samples" in data:                         # the images' VQ is fitted on the train split
        out += ["data.fit_samples=32", "data.fit_iters=2", "data.codebook_size=16"]
    if "train_size" in data:
        out += ["data.train_size=64", "data.val_size=16"]
    if composed(name).module.get("stage") == "opd":   # self-distillation: no teacher checkpoint
        out += ["module.opd.teacher=null", "module.opd.teacher_prompt=answer"]
    module = composed(name).module
    if module.get("agent") is not None and module.stage == "rl":   # guides and verdict credit too
        out += ["module.agent.guide=true", "data.note_form=checks",
                "module.agent.verdict_credit=1.0"]
    if module.get("latent") is not None:                                        # Future-L1
        out += ["module.latent.budget=4", "module.evaluation.max_new_tokens=2"]
        if module.stage == "rl":
            out += ["module.rl.prompts=2", "module.rl.group_size=2"]
    if module.get("teacher") in ("visual_cue", "answer", "stronger"):          # ViCuR
        out += ["module.rl.prompts=2", "module.rl.max_new_tokens=2",
                "module.evaluation.max_new_tokens=2"]
        if module.teacher == "stronger":
            out.append(f"module.opd.teacher={teacher()}")
    return out


@pytest.fixture(scope="module")
def teacher_ckpt(workdir):
    """A tiny video-LLM checkpoint of the world tokenizer (the stronger teacher's stand-in): the
    answer-teacher experiment's, when it has run already."""
    done = workdir / "runs" / "vicur_answer_teacher" / "checkpoints" / "last.ckpt"
    if done.is_file():
        return done
    run = workdir / "runs" / "teacher"
    args = ["fit", "experiment=vicur_answer_teacher", "trainer.max_steps=1",
            "trainer.limit_val_batches=0", "logger=csv", SMALL_SAMPLES, "module.rl.prompts=2",
            "module.rl.max_new_tokens=2", f"hydra.run.dir={run}"]
    assert main(args) == 0, args
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    assert main(["data", "synth", "--task", "describe", "--out", str(root / "real"),
                 "--samples", "16", "--shards", "1"]) == 0
    assert main(["data", "synth", "--task", "future", "--out", str(root / "real_future"),
                 "--samples", "16", "--shards", "1"]) == 0
    return root


def test_every_experiment_file_is_covered():
    assert {"debug", "sar", "videollm_cpt", "videollm_sft", "videollm_real", "vicur",
            "vicur_answer_teacher", "vicur_stronger_teacher"} <= set(EXPERIMENTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_trains_two_steps(name, workdir, monkeypatch, request):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("FRAMELAB_CACHE", str(workdir / "cache"))
    teacher = lambda: request.getfixturevalue("teacher_ckpt")   # noqa: E731
    args = ["fit", f"experiment={name}", *TWO_STEPS, *small_data(name, workdir / "real", teacher),
            f"hydra.run.dir={workdir / 'runs' / name}"]
    assert main(args) == 0, args
    run = workdir / "runs" / name
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    losses = [line for line in (run / "metrics.csv").read_text().splitlines()[1:]
              if line.split(",")[0]]
    assert losses, "no metrics logged"
