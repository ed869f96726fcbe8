"""Streaming remote shards: shards served over HTTP on 127.0.0.1 (a fixture starts and stops the
server) are read through the bounded shard cache in shard-block order, resume exactly with other
worker counts and world sizes, and failures (unreachable, stalled, missing shards) are counted
skips or one-line errors, never hangs."""
import functools
import http.server
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from framelab.datamodules.fetch import FetchError, fetch
from framelab.datamodules.order import sample_order
from framelab.datamodules.synth import synthesize
from framelab.datamodules.tokenizer import ensure_tokenizer
from framelab.errors import UserError
from tests.datamodules.resume_helpers import consume, run_distributed

N, SHARDS = 37, 6


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, folder) of describe shards served over HTTP; the server stops after the module."""
    root = tmp_path_factory.mktemp("served")
    synthesize("describe", root, N, SHARDS, progress=False)
    tokenizer = ensure_tokenizer(tmp_path_factory.mktemp("tok"))   # trained once for the module
    tok_path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tokenizer.save(str(tok_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, str(tok_path)
    server.shutdown()
    server.server_close()


def kwargs(served, tmp_path, **kw):
    base, _, tok = served
    return {"tokenizer_path": tok, "data_dir": f"{base}/describe-train-{{000000..{SHARDS - 1:06d}}}.tar", "cache_dir": str(tmp_path / "cache"),
            "max_frames": 4, "max_tokens": 150, "seed": 3, "shuffle_window": 2, "fetch_retries": 0,
            "fetch_timeout": 20, **kw}


def flat(steps):
    return [i for step in steps for i in step]


def cached_tars(tmp_path) -> list[Path]:
    return list((tmp_path / "cache" / "shards").glob("*.tar"))


def test_block_order_is_pure_and_keeps_samples_in_their_block():
    sizes = [5, 7, 6, 6, 4]
    a = sample_order(sizes, seed=1, epoch=0, mode="blocks", window=2)
    assert np.array_equal(a, sample_order(sizes, seed=1, epoch=0, mode="blocks", window=2))
    assert sorted(a.tolist()) == list(range(sum(sizes)))
    assert not np.array_equal(a, sample_order(sizes, seed=1, epoch=1, mode="blocks", window=2))
    shard_of = np.repeat(np.arange(len(sizes)), sizes)[a]
    cuts, start = [], 0                     # consecutive runs of 2 shards' samples, then the rest
    while start < len(a):
        block = set(shard_of[start:start + 1])
        end = start
        while end < len(a) and (shard_of[end] in block or len(block) < 2):
            block.add(shard_of[end])
            end += 1
        cuts.append(block)
        start = end
    assert all(len(b) <= 2 for b in cuts) and len(cuts) == 3
    full = sample_order(sizes, seed=1, epoch=0, mode="full")
    assert sorted(full.tolist()) == list(range(sum(sizes)))


def test_http_shards_stream_within_the_cache_limit_and_resume_exactly(served, tmp_path):
    _, root, _ = served
    manifest = json.loads((root / "manifest.json").read_text())
    biggest = max(s["bytes"] for s in manifest["shards"])
    limit = 4 * biggest + 1                  # two blocks of two shards
    kw = kwargs(served, tmp_path, cache_limit=limit)
    ref = consume(kw, None, None)
    ids = flat(ref["ids"])
    assert sorted(ids) == sorted(s["key"] for sh in manifest["shards"] for s in sh["samples"])
    assert cached_tars(tmp_path) == []      # every copy evicted after its last read
    from framelab.datamodules.video_text import VideoTextDataModule
    dm = VideoTextDataModule(**kw)
    dm.setup("fit")
    peak = 0
    for batch in dm.train_dataloader():     # the cache stays within its limit all along
        dm.on_before_batch_transfer(batch, 0)
        peak = max(peak, sum(p.stat().st_size for p in cached_tars(tmp_path)))
    assert 0 < peak <= limit
    workers = {**kw, "cache_limit": 6 * biggest + 1}   # with 2 workers: three blocks
    two = VideoTextDataModule(**{**kw, "num_workers": 2})
    two.setup("fit")
    with pytest.raises(UserError, match="cache_limit"):
        two.train_dataloader()
    part1 = consume({**workers, "num_workers": 2}, None, steps=4)
    part2 = consume({**workers, "num_workers": 1}, part1["state"], steps=None)
    assert flat(part1["ids"]) + flat(part2["ids"]) == ids
    shard_of = {s["key"]: i for i, sh in enumerate(manifest["shards"]) for s in sh["samples"]}
    first_block = {shard_of[k] for k in ids[:sum(len(sh["samples"]) for sh in manifest["shards"][:2])]}
    assert len(first_block) <= 3             # block shuffle: the first samples come from few shards


def test_remote_resume_changes_world_size_and_workers(served, tmp_path):
    kw = kwargs(served, tmp_path, cache_limit="1GB")
    ref = flat(consume(kw, None, None)["ids"])
    c = consume(kw, None, 5)
    a, d = run_distributed(2, [({**kw, "num_workers": 1}, None, 3, 1),
                               ({**kw, "num_workers": 2}, c["state"], None, 1)], tmp_path, "fork")
    assert len(a[0]["ids"]) == len(a[1]["ids"]) and a[0]["state"] == a[1]["state"]
    merged = [None] * (2 * len(flat(a[0]["ids"])))
    merged[0::2], merged[1::2] = flat(a[0]["ids"]), flat(a[1]["ids"])
    b = consume({**kw, "num_workers": 2}, a[0]["state"], None)
    assert merged + flat(b["ids"]) == ref
    got = flat(c["ids"])
    rest = [None] * (2 * len(flat(d[0]["ids"])))
    rest[0::2], rest[1::2] = flat(d[0]["ids"]), flat(d[1]["ids"])
    tail = (N - c["state"]["consumed"]) % 2
    assert got + rest == ref[:N - tail]


def test_a_shard_that_cannot_be_fetched_is_counted_then_stops_the_run(served, tmp_path):
    base, root, _ = served
    gone = root / "gone"                      # the set again, without the file of shard 1
    gone.mkdir(exist_ok=True)
    manifest = json.loads((root / "manifest.json").read_text())
    for i, s in enumerate(manifest["shards"]):
        if i != 1:
            shutil.copy(root / s["name"], gone / s["name"])
    shutil.copy(root / "manifest.json", gone / "manifest.json")
    kw = kwargs(served, tmp_path, data_dir=f"{base}/gone/manifest.json", cache_limit="1GB", max_skip_rate=0.5)
    out = consume(kw, None, None)
    lost = {s["key"] for s in manifest["shards"][1]["samples"]}
    assert set(flat(out["ids"])) == {s["key"] for sh in manifest["shards"] for s in sh["samples"]} - lost
    assert out["state"]["skipped"] == len(lost)
    with pytest.raises(UserError) as err:
        consume({**kw, "max_skip_rate": 0.01, "skip_check_after": 1}, None, None)
    msg = str(err.value)
    assert "\n" not in msg and "fetch_failed" in msg and f"gone/{manifest['shards'][1]['name']}" in msg


def test_unreachable_urls_and_bad_values_are_one_line_errors(served, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]               # closed again: nothing listens there
    from framelab.datamodules.video_text import VideoTextDataModule
    dm = VideoTextDataModule(**kwargs(served, tmp_path, data_dir=f"http://127.0.0.1:{port}/a-{{0..1}}.tar"))
    with pytest.raises(UserError, match="connection refused") as err:
        dm.setup("fit")
        dm.train_dataloader()
    assert "\n" not in str(err.value) and f"127.0.0.1:{port}/a-0.tar" in str(err.value)
    for bad, match in [({"cache_limit": "lots"}, "cache_limit"), ({"shuffle": "sometimes"}, "shuffle"),
                       ({"shuffle_window": 0}, "shuffle_window"), ({"data_dir": "nope://x/a.tar"}, "scheme")]:
        with pytest.raises(UserError, match=match):
            VideoTextDataModule(**kwargs(served, tmp_path, **bad)).train_dataloader()
    small = VideoTextDataModule(**kwargs(served, tmp_path, cache_limit=1000))
    with pytest.raises(UserError, match="cache_limit=1000"):
        small.train_dataloader()


def test_a_stalled_transfer_ends_at_its_deadline(tmp_path):
    with socket.socket() as listener:           # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/slow.tar"
        start = time.monotonic()
        with open(tmp_path / "out", "wb") as out, pytest.raises(FetchError, match="within 1 s"):
            fetch(url, out, timeout=1.0)
        assert time.monotonic() - start < 8


def test_pack_to_a_pipe_target_then_info_and_train_from_it(served, tmp_path, capsys):
    from PIL import Image

    from framelab.datamodules.commands import main
    from framelab.datamodules.video_text import VideoTextDataModule
    frames = tmp_path / "videos" / "clip"
    frames.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(frames / f"{i:04d}.png")
    records = [{"id": f"r{i}", "video": "clip", "conversations": [
        {"from": "human", "value": "<video>\nBrightness?"}, {"from": "gpt", "value": f"level {i}"}]} for i in range(3)]
    (tmp_path / "ann.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    assert main(["pack", "--videos", str(tmp_path / "videos"), "--annotations", str(tmp_path / "ann.jsonl"),
                 "--out", f"pipe:cat > {bucket}/{{name}}", "--size", "32", "--samples-per-shard", "2",
                 "--no-progress"]) == 0
    assert sorted(p.name for p in bucket.iterdir()) == ["manifest.json", "pack_report.json",
                                                        "real-train-000000.tar", "real-train-000001.tar"]
    capsys.readouterr()
    assert main(["info", f"pipe:cat {bucket}/{{name}}"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["samples"] == 3 and len(shown["shards"]) == 2
    dm = VideoTextDataModule(**kwargs(served, tmp_path, data_dir=f"pipe:cat {bucket}/{{name}}", cache_limit="1GB",
                                      max_tokens=400, image_size=32))
    dm.setup("fit")
    got = [i for b in dm.train_dataloader() for i in b["sample_ids"]]
    assert sorted(got) == ["r0", "r1", "r2"]
    with pytest.raises(UserError, match="name"):
        main(["pack", "--videos", str(tmp_path / "videos"), "--annotations", str(tmp_path / "ann.jsonl"),
              "--out", "pipe:cat > /dev/null", "--no-progress"])
