"""Corrupt shards are survived and counted: truncated tars, undecodable or missing frames, bad
JSON; past max_skip_rate the run stops with one message naming the shards."""
import json
import os
import shutil

import pytest

from framelab.datamodules.reader import ShardSet
from framelab.datamodules.synth import synthesize
from framelab.errors import UserError
from tests.datamodules.resume_helpers import consume, consume_distributed


def overwrite(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """30 describe samples in 3 png shards: shard 0 has one garbled frame and one frame member
    renamed away, shard 1 one garbled JSON, shard 2 is cut in half. Returns (folder, bad keys).
    The manifest is rewritten without member checksums (as sets written before them are), so the
    damage is met by the decoders; test_data_trust.py covers what checksums catch."""
    root = tmp_path_factory.mktemp("broken")
    manifest = synthesize("describe", root, 30, 3, frames_format="png", progress=False)
    for shard in manifest["shards"]:
        for sample in shard["samples"]:
            del sample["crc32"]
    s0, s1, s2 = manifest["shards"]
    bad = set()
    first = s0["samples"][1]
    overwrite(root / s0["name"], first["members"]["003.png"][0], b"\x00garbage\x00" * 4)
    bad.add(first["key"])
    second = s0["samples"][4]
    off, size = second["members"].pop("005.png")  # the index no longer lists this frame
    bad.add(second["key"])
    (root / "manifest.json").write_text(json.dumps(manifest))
    third = s1["samples"][2]
    overwrite(root / s1["name"], third["members"]["json"][0], b"{not json")
    bad.add(third["key"])
    path2 = root / s2["name"]
    cut = s2["samples"][5]["members"]["json"][0] + 10
    os.truncate(path2, cut)
    bad.update(s["key"] for s in s2["samples"][5:])
    return root, bad


def kwargs(root, **kw):
    return {"data_dir": str(root), "max_frames": 4, "max_tokens": 200, "max_skip_rate": 0.5,
            "cache_dir": str(root / "cache"), **kw}


def test_skips_are_counted_and_good_samples_all_arrive(broken):
    root, bad = broken
    out = consume(kwargs(root, num_workers=2), None, None)
    got = [i for step in out["ids"] for i in step]
    good = {f"describe_train_{i:09d}" for i in range(30)} - bad
    assert sorted(got) == sorted(good)
    assert out["state"]["skipped"] == len(bad) and out["state"]["seen"] == 30


def test_reasons_are_named(broken):
    from framelab.datamodules.video_text import VideoTextDataModule
    root, _ = broken
    dm = VideoTextDataModule(**kwargs(root))
    dm.setup()
    for batch in dm.train_dataloader():
        dm.on_before_batch_transfer(batch, 0)
    assert dm.state.reasons["truncated"] >= 1 and dm.state.reasons["bad_json"] == 1
    assert dm.state.reasons["bad_frame"] == 1 and dm.state.reasons["missing_frame"] == 1


def test_skip_rate_stops_with_shard_names(broken):
    root, _ = broken
    with pytest.raises(UserError) as err:
        consume(kwargs(root, max_skip_rate=0.05, skip_check_after=8), None, None)
    msg = str(err.value)
    assert "\n" not in msg and "max_skip_rate" in msg
    assert any(f"describe-train-00000{k}.tar" in msg for k in range(3))


def test_truncated_tar_without_manifest_is_indexed_up_to_the_damage(broken, tmp_path):
    root, _ = broken
    shutil.copy(root / "describe-train-000002.tar", tmp_path / "x.tar")
    shards = ShardSet(tmp_path)
    assert len(shards) == 5 and str(tmp_path / "x.tar") in shards.scan_errors


def test_two_ranks_survive_corruption_in_lock_step(broken, tmp_path):
    root, bad = broken
    results = consume_distributed(2, kwargs(root, num_workers=1), None, None, tmp_path)
    assert len(results[0]["ids"]) == len(results[1]["ids"])
    got = [i for r in results for step in r["ids"] for i in step]
    assert sorted(got) == sorted({f"describe_train_{i:09d}" for i in range(30)} - bad)
    assert results[0]["state"]["skipped"] == results[1]["state"]["skipped"] == len(bad)
