"""The vision stage: a short run lifts the linear-probe accuracy of colour and shape far above
chance, and its tower and projector carry into a video-LLM run through `init_from` with parts,
frozen when asked."""
import pytest
import torch

from framelab.benchmarks import probe
from framelab.cli import main

SMALL_DATA = ["data.tasks=[describe]", "data.samples={train: 1024, val: 16, test: 16}",
              "data.shards=1", "logger=none"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    run = root / "run"
    code = main(["fit", "experiment=vision_pretrain", "trainer.max_steps=300",
                 f"paths.cache_dir={root / 'cache'}", f"hydra.run.dir={run}", *SMALL_DATA])
    assert code == 0
    return root, run / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_a_short_vision_stage_makes_colour_and_shape_linearly_readable(pretrained):
    _, ckpt = pretrained
    torch.manual_seed(0)
    trained = probe.probe(probe.load_model(str(ckpt)), 300, 150, 64, 2, 3)
    by_level = {row["features"].split()[0]: row for row in trained}
    # chance: colour 1/8, shape 1/6
    assert by_level["tower"]["colour"] > 0.8 and by_level["projector"]["colour"] > 0.7, trained
    assert by_level["tower"]["shape"] > 0.3, trained


@pytest.mark.slow
def test_init_from_takes_the_tower_and_projector_and_freezing_keeps_them(pretrained):
    root, ckpt = pretrained
    run = root / "sft"
    assert main(["fit", "experiment=videollm_sft", f"init_from={ckpt}",
                 "module.init_parts=[vision,projector]", "module.freeze={vision: true, projector: true}",
                 "module.grounding_weight=0.5",     # the word-grounding term runs on the labels too
                 "callbacks.curriculum.phases=[{step: 0, max_frames: 2}]", "trainer.max_steps=3",
                 "trainer.limit_val_batches=0", f"paths.cache_dir={root / 'cache'}",
                 f"hydra.run.dir={run}", *SMALL_DATA]) == 0
    before = torch.load(ckpt, weights_only=True)["state_dict"]
    after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    towers = [k for k in before if k.startswith(("model.vision.", "model.projector."))]
    assert towers and all(torch.equal(before[k], after[k]) for k in towers)
    lm = [k for k in before if k.startswith("model.lm.")]
    assert any(not torch.equal(before[k], after[k]) for k in lm)  # the LM was trained (and not taken)


@pytest.mark.slow
def test_the_vision_stage_trains_the_idle_lm_on_text_only_documents_when_asked(pretrained):
    root, _ = pretrained
    parts = {}
    for tokens in (0, 512):
        run = root / f"text{tokens}"
        assert main(["fit", "experiment=vision_pretrain", "trainer.max_steps=2", "seed=3",
                     f"module.vision_text_tokens={tokens}", f"paths.cache_dir={root / 'cache'}",
                     "trainer.gradient_clip_val=null",  # a global-norm clip would couple them
                     f"hydra.run.dir={run}", *SMALL_DATA, "data.tasks=[describe,choose]"]) == 0
        state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        parts[tokens] = {name: {k: v for k, v in state.items() if k.startswith(f"model.{name}.")}
                         for name in ("vision", "lm")}
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert same(parts[0]["vision"], parts[512]["vision"])   # the text loss leaves the tower alone
    assert not same(parts[0]["lm"], parts[512]["lm"])       # and trains the LM
