"""Data from outside is untrusted: a video's timestamps, length or decode time, an empty annotation
file, a damaged manifest or shard, a bad command line, a crashed generation. Each is bounded or
turned into one counted skip or one line naming what is wrong."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import av
import numpy as np
import pytest

from framelab.cli import main as cli
from framelab.datamodules import media
from framelab.datamodules import pack as pack_mod
from framelab.datamodules import tokenizer as tokenizer_mod
from framelab.datamodules.commands import main
from framelab.datamodules.reader import SampleError, ShardSet
from framelab.datamodules.shards import read_manifest
from framelab.datamodules.stream import SampleStream
from framelab.datamodules.synth import cache_key, ensure_world_shards, synthesize
from framelab.errors import UserError
from tests.datamodules.test_pack import write_video

QA = [{"from": "human", "value": "<video>\nWhat?"}, {"from": "gpt", "value": "A bar."}]


@contextmanager
def deadline(seconds: int):
    """Fail the test instead of hanging when the body runs past `seconds`."""
    def expire(*_):
        raise AssertionError(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def one_line_error(capsys, argv) -> str:
    """Run `framelab ARGV`; it must fail with status 2 and one stderr line, which is returned."""
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("framelab: error: "), err
    return err


# -- videos: timestamps, length, decode time ------------------------------------------------------

def test_a_huge_frame_timestamp_costs_no_more_than_a_small_one(tmp_path):
    path = tmp_path / "far.mkv"
    times = [0.0, 0.5, 1e12]  # the last frame 1e12 s (~32,000 years) after the first
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=2)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        packets = []
        for i in range(len(times)):
            img = np.full((32, 32, 3), 60 * i, np.uint8)
            packets += stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24"))
        packets += stream.encode()
        for packet, t in zip(packets, times):
            packet.pts = packet.dts = int(round(t / packet.time_base))
            out.mux(packet)
    with deadline(30):
        clip = media.decode_video(path, fps=2.0, max_frames=8, size=32)
    assert clip.frames.shape[0] == 3 and clip.duration > 1e11


def test_a_long_video_holds_at_most_twice_max_frames_spread_over_the_clip(tmp_path, monkeypatch):
    n, width, max_frames = 600, 64, 8
    path = tmp_path / "long.mp4"
    write_video(path, frames=n, fps=120, w=width, h=16)  # a red bar grows one column per ~9 frames
    peak = []

    class Counting(media.FrameKeeper):
        def add(self, slot, frame):
            peak.append(len(self.frames) + 1)  # held right after this frame is appended
            super().add(slot, frame)

    monkeypatch.setattr(media, "FrameKeeper", Counting)
    clip = media.decode_video(path, fps=120.0, max_frames=max_frames, size=16)
    assert max(peak) <= 2 * max_frames
    assert clip.frames.shape[0] == max_frames
    assert clip.duration == pytest.approx(n / 120, rel=0.01)
    assert clip.fps == pytest.approx(max_frames / clip.duration)
    red = (clip.frames[:, :, :, 0].astype(int) - clip.frames[:, :, :, 1] > 80).mean(axis=1).round()
    shown = red.sum(axis=1) * n / width  # about which source frame each kept frame is
    gap = n / max_frames
    assert np.all(np.diff(shown) > 0)
    assert shown[0] < gap and shown[-1] > n - gap and np.diff(shown).max() <= 2 * gap


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "a.mp4")
    (folder / "slow.mp4").write_bytes(b"never decoded: the test's decoder stalls on it")
    return folder


def test_a_stalling_record_is_one_timeout_skip(videos, tmp_path, monkeypatch, capsys):
    real = pack_mod.load_media

    def load(path, *args):
        while path.name == "slow.mp4":
            time.sleep(0.05)  # a decoder that never finishes
        return real(path, *args)

    monkeypatch.setattr(pack_mod, "load_media", load)
    records = [{"id": i, "video": v, "conversations": QA} for i, v in enumerate(["a.mp4", "slow.mp4", "a.mp4"])]
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in records))
    handler = signal.getsignal(signal.SIGALRM)
    with deadline(60):
        assert main(["pack", "--videos", str(videos), "--annotations", str(ann), "--out", str(tmp_path / "out"),
                     "--size", "32", "--no-progress", "--max-bad-fraction", "0.5", "--record-timeout", "0.5"]) == 0
    report = json.loads((tmp_path / "out" / "pack_report.json").read_text())
    assert report["written"] == 2 and report["skipped"] == {"timeout": 1}
    assert "slow.mp4" in report["examples"]["timeout"][0] and "0.5 s" in report["examples"]["timeout"][0]
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_time_limit_is_off_outside_the_main_thread():
    finished = []

    def body():
        with media.time_limit(0.01):
            time.sleep(0.1)
        finished.append(True)

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    assert finished == [True]


@pytest.mark.parametrize("name, text", [("empty.jsonl", ""), ("blank.jsonl", "\n  \n"), ("list.json", "[]")])
def test_an_annotation_file_without_records_is_one_line(videos, tmp_path, capsys, name, text):
    (tmp_path / name).write_text(text)
    err = one_line_error(capsys, ["data", "pack", "--videos", str(videos), "--annotations", str(tmp_path / name),
                                  "--out", str(tmp_path / "out"), "--no-progress"])
    assert f"{tmp_path / name} holds no records; give a JSONL file" in err
    assert "packed" not in capsys.readouterr().out


def test_pack_options_out_of_range_are_one_line(videos, tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text(json.dumps({"video": "a.mp4", "conversations": QA}) + "\n")
    err = one_line_error(capsys, ["data", "pack", "--videos", str(videos), "--annotations", str(tmp_path / "a.jsonl"),
                                  "--out", str(tmp_path / "out"), "--fps", "0"])
    assert "--fps 0.0: expected a number > 0" in err


# -- the world cache and the tokenizer cache -------------------------------------------------------

def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_folders_of_dead_generations_are_removed(tmp_path):
    name = cache_key("describe", "train", 2, 1, None, "npy", 0)
    host, dead = socket.gethostname(), dead_pid()
    stale = [tmp_path / f"{name}.tmp-{dead}", tmp_path / f"{name}.tmp-{host}-{dead}"]
    kept = [tmp_path / f"{name}.tmp-{host}-{os.getppid()}",      # a live process's
            tmp_path / f"{name}.tmp-elsewhere.example-{dead}"]   # another host's: its pid means nothing here
    for folder in stale + kept:
        folder.mkdir()
        (folder / "describe-train-000000.tar").write_bytes(b"half written")
    folder = ensure_world_shards(tmp_path, "describe", "train", 2, 1)
    assert folder.name == name and len(ShardSet(folder)) == 2
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["022", "027"])
def test_the_cached_tokenizer_has_the_usual_mode(tmp_path, monkeypatch, umask):
    real = tokenizer_mod.train_world_tokenizer
    monkeypatch.setattr(tokenizer_mod, "train_world_tokenizer", lambda v: real(v, samples_per_task=1))
    previous = os.umask(umask)
    try:
        tokenizer_mod.ensure_tokenizer(tmp_path, vocab_size=300)
    finally:
        os.umask(previous)
    (path,) = tmp_path.glob("tokenizer-*/*")
    assert path.name == "tokenizer.json" and path.stat().st_mode & 0o777 == 0o666 & ~umask


# -- shards: checksums and manifests --------------------------------------------------------------

@pytest.fixture
def shard_set(tmp_path):
    root = tmp_path / "set"
    manifest = synthesize("describe", root, 6, 1, frames_format="npy", progress=False)
    return root, manifest


def read_all(root) -> dict[str, str]:
    """key -> 'ok' or the SampleError reason, for every sample of the set."""
    shards, out = ShardSet(root), {}
    for i, ref in enumerate(shards.refs):
        try:
            shards.read(i)
            out[ref.key] = "ok"
        except SampleError as e:
            out[ref.key] = e.reason
    shards.close()
    return out


def test_a_flipped_byte_inside_a_member_is_a_checksum_skip(shard_set):
    root, manifest = shard_set
    shard = manifest["shards"][0]
    victim = shard["samples"][3]
    offset, size = victim["members"]["npy"]
    with open(root / shard["name"], "r+b") as f:  # a pixel deep inside the frames: still a valid npy
        f.seek(offset + size // 2)
        byte = f.read(1)
        f.seek(offset + size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    got = read_all(root)
    assert got == {s["key"]: "checksum" if s is victim else "ok" for s in shard["samples"]}
    stream = SampleStream(ShardSet(root), lambda members, ref: {"frames": len(members["npy"])}, shuffle=False)
    assert [item.get("_skip") for item in stream] == [None, None, None, "checksum", None, None]


def test_a_manifest_without_checksums_still_reads(shard_set):
    root, manifest = shard_set
    for sample in manifest["shards"][0]["samples"]:
        del sample["crc32"]
    manifest["format_version"] = 1
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert set(read_all(root).values()) == {"ok"}


@pytest.mark.parametrize("edit, problem", [
    (lambda text: text[: len(text) // 2], "is not valid JSON"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "shards"}), "no 'shards' list"),
    (lambda text: text.replace('"members": {', '"members": {"bad": [-1, 3], ', 1),
     "shards[0].samples[0] member 'bad' is not [offset, size]"),
    (lambda text: text.replace('"name": "', '"name": "../', 1), "is not a path inside the folder"),
])
def test_a_damaged_manifest_is_one_line_naming_it(shard_set, capsys, edit, problem):
    root, _ = shard_set
    path = root / "manifest.json"
    path.write_text(edit(path.read_text()))
    err = one_line_error(capsys, ["data", "info", str(root)])
    assert f"{path}" in err and problem in err and "framelab data synth" in err
    for load in (read_manifest, ShardSet):  # what training reads through: a UserError, one line
        with pytest.raises(UserError) as caught:
            load(root)
        assert "\n" not in str(caught.value) and problem in str(caught.value)


def test_fit_on_a_damaged_manifest_ends_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text('{"shards": 3')
    monkeypatch.chdir(tmp_path)
    assert cli(["fit", "model=tiny-video", "data=video_world", f"data.data_dir={tmp_path / 'bad'}",
                "trainer.max_steps=1", "logger=none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"framelab: error: {tmp_path / 'bad' / 'manifest.json'} is not valid JSON")
    assert not any("Traceback" in line for line in err)


# -- framelab data synth's command line -----------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--param", "frames=abc"], "task describe parameter frames='abc': expected a positive integer (default 8)"),
    (["--param", "frames=-4"], "frames=-4: expected a positive integer"),
    (["--param", "frames=0"], "frames=0: expected a positive integer"),
    (["--param", "mcq_prob=1.5"], "mcq_prob=1.5: expected a probability in [0, 1]"),
    (["--param", "min_objects=5", "--param", "max_objects=2"], "min_objects=5 > max_objects=2"),
    (["--param", "questions=9"], "questions=9; expected 1..3"),
    (["--world-seed", "-1"], "world seed -1: expected an integer >= 0"),
])
def test_bad_synth_values_are_one_line(tmp_path, capsys, extra, message):
    err = one_line_error(capsys, ["data", "synth", "--task", "describe", "--out", str(tmp_path / "d"),
                                  "--samples", "2", "--no-progress", *extra])
    assert message in err, err


def test_bad_list_parameter_and_unwritable_out_are_one_line(tmp_path, capsys):
    err = one_line_error(capsys, ["data", "synth", "--task", "needle", "--out", str(tmp_path / "d"),
                                  "--samples", "2", "--no-progress", "--param", "lengths=[64,0]"])
    assert "lengths=[64, 0]: expected a non-empty list, each item a positive integer" in err
    (tmp_path / "file").write_text("not a folder")
    err = one_line_error(capsys, ["data", "synth", "--task", "describe", "--out", str(tmp_path / "file" / "d"),
                                  "--samples", "2", "--no-progress"])
    assert f"--out: cannot write in {tmp_path / 'file' / 'd'}" in err and "give a folder you can write to" in err
