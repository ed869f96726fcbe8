"""`framelab data synth`, the manifest, WebDataset compatibility and the embedded-data cache."""
import json

import numpy as np
import pytest
import webdataset as wds

from framelab.datamodules import synth as synth_mod
from framelab.datamodules.commands import main
from framelab.datamodules.decode import FrameSource, select_frames
from framelab.datamodules.reader import ShardSet
from framelab.datamodules.synth import ensure_world_shards
from framelab.world.scene import sample_seed
from framelab.world.tasks import TASKS, make_sample


def test_synth_every_task_and_split(tmp_path, capsys):
    assert main(["synth", "--task", "all", "--split", "all", "--out", str(tmp_path), "--samples", "3",
                 "--shards", "2", "--no-progress"]) == 0
    for task in TASKS:
        for split in ("train", "val", "test", "ood"):
            m = json.loads((tmp_path / task / split / "manifest.json").read_text())
            assert m["samples"] == 3 and len(m["shards"]) == 2 and m["recipe_version"]
            assert m["seeds"] == {"first": sample_seed(split, 0), "last": sample_seed(split, 2)}
            assert sum(len(s["samples"]) for s in m["shards"]) == 3
    assert "needle/ood: 3 samples in 2 shards" in capsys.readouterr().out


def test_shards_are_webdataset_and_match_generator(tmp_path):
    main(["synth", "--task", "future", "--out", str(tmp_path), "--samples", "4", "--shards", "2",
          "--format", "png", "--param", "observed=6", "--param", "future=4", "--no-progress"])
    urls = sorted(str(p) for p in tmp_path.glob("*.tar"))
    got = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in got] == [f"future_train_{i:09d}" for i in range(4)]
    ann = json.loads(got[2]["json"])
    ref = make_sample("future", "train", 2, {"observed": 6, "future": 4})
    assert ann["conversations"] == ref.conversation and ann["num_frames"] == 6
    frames = FrameSource({k: v for k, v in got[2].items() if not k.startswith("__")}).get(list(range(6)))
    assert np.array_equal(frames, ref.frames)  # png is lossless
    future = FrameSource({k: v for k, v in got[2].items() if not k.startswith("__")}, "future.")
    assert future.count == 4
    gt = np.load(__import__("io").BytesIO(got[2]["gt.npz"]))
    assert gt["pos"].shape == (10, len(ann["meta"]["objects"]), 2)


def test_bad_synth_arguments_are_user_errors(tmp_path):
    from framelab.errors import UserError
    with pytest.raises(UserError, match="unknown parameter"):
        main(["synth", "--task", "describe", "--out", str(tmp_path), "--samples", "2", "--param", "nope=1"])
    with pytest.raises(UserError, match="shards"):
        main(["synth", "--task", "describe", "--out", str(tmp_path), "--samples", "2", "--shards", "3"])


def test_cache_reuses_and_regenerates_on_recipe_change(tmp_path, monkeypatch):
    a = ensure_world_shards(tmp_path, "describe", "train", 5, 2)
    stamp = (a / "manifest.json").stat().st_mtime_ns
    assert ensure_world_shards(tmp_path, "describe", "train", 5, 2) == a
    assert (a / "manifest.json").stat().st_mtime_ns == stamp  # not regenerated
    assert ensure_world_shards(tmp_path, "describe", "train", 6, 2) != a  # other params, other set
    monkeypatch.setattr(synth_mod, "RECIPE_VERSION", "world-test")
    b = ensure_world_shards(tmp_path, "describe", "train", 5, 2)
    assert b != a and json.loads((b / "manifest.json").read_text())["recipe_version"] == "world-test"
    monkeypatch.setenv("FRAMELAB_CACHE", str(tmp_path / "env"))
    assert str(synth_mod.resolve_cache_dir(None)) == str(tmp_path / "env")
    assert len(ShardSet(b)) == 5


def test_frame_selection_modes():
    assert select_frames(10, "uniform", 4) == [1, 3, 6, 8]
    assert select_frames(10, "all", 16) == list(range(10))
    assert select_frames(9, "all", 16) == list(range(9)) + [8]  # odd: last repeated
    assert select_frames(1, "uniform", 8) == [0, 0]  # an image becomes two frames
    assert select_frames(40, "fps", 64, src_fps=8.0, target_fps=2.0) == list(range(0, 40, 4))
    assert len(select_frames(400, "fps", 16, src_fps=8.0, target_fps=2.0)) == 16
