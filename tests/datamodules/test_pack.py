"""`framelab data pack`: real mp4/webm files, frame folders and both annotation styles become
shards that VideoTextDataModule reads back; bad records are skipped, counted and named."""
import json

import av
import numpy as np
import pytest
from PIL import Image

from framelab.datamodules.commands import main
from framelab.datamodules.reader import ShardSet
from framelab.datamodules.video_text import VideoTextDataModule


def write_video(path, frames=12, fps=6, codec="mpeg4", w=64, h=48):
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            img[:, : (t + 1) * w // frames] = (200, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    vids = root / "videos"
    vids.mkdir()
    write_video(vids / "a.mp4")
    write_video(vids / "b.webm", frames=8, fps=4, codec="libvpx-vp9")
    (vids / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (vids / "frames").mkdir()
    for i in range(5):
        Image.fromarray(np.full((40, 40, 3), i * 40, np.uint8)).save(vids / "frames" / f"{i:04d}.png")
    qa = lambda q, a: [{"from": "human", "value": f"<video>\n{q}"}, {"from": "gpt", "value": a}]
    lines = [
        json.dumps({"id": "clip.a", "video": "a.mp4", "conversations": qa("What moves?", "A red bar.")}),
        json.dumps({"messages": [{"role": "user", "content": "Describe."},
                                 {"role": "assistant", "content": "Grey."}], "videos": ["frames"]}),
        json.dumps({"id": "b", "video": "b.webm", "conversations": qa("Colour?", "red")}),
        json.dumps({"id": "gone", "video": "missing.mp4", "conversations": qa("?", "x")}),
        json.dumps({"id": "bad", "video": "broken.mp4", "conversations": qa("?", "x")}),
        "{this is not json",
        json.dumps({"id": "noans", "video": "a.mp4", "conversations": [{"from": "human", "value": "hi"}]}),
    ]
    (root / "ann.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_pack_counts_and_names_bad_records(folder, capsys):
    out = folder / "shards"
    args = ["pack", "--videos", str(folder / "videos"), "--annotations", str(folder / "ann.jsonl"),
            "--out", str(out), "--fps", "3", "--max-frames", "8", "--size", "32", "--no-progress",
            "--samples-per-shard", "2"]
    assert main(args + ["--max-bad-fraction", "0.6"]) == 0
    report = json.loads((out / "pack_report.json").read_text())
    assert report["total"] == 7 and report["written"] == 3
    assert report["skipped"] == {"missing_file": 1, "undecodable": 1, "malformed": 2}
    assert "missing.mp4" in report["examples"]["missing_file"][0]
    assert "line 6" in report["examples"]["malformed"][0]
    text = capsys.readouterr().out
    assert "packed 3 of 7" in text and "broken.mp4" in text
    assert main(args + ["--max-bad-fraction", "0.5"]) == 1  # 4/7 bad is too many


def test_packed_shards_read_back_through_datamodule(folder, tmp_path):
    out = folder / "shards2"
    assert main(["pack", "--videos", str(folder / "videos"), "--annotations", str(folder / "ann.jsonl"),
                 "--out", str(out), "--fps", "3", "--max-frames", "8", "--size", "32", "--no-progress",
                 "--max-bad-fraction", "0.9"]) == 0
    shards = ShardSet(out)
    assert [r.key for r in shards.refs] == ["clip_a", "line00000002", "b"]
    ann = json.loads(shards.read(0)["json"])
    assert ann["num_frames"] == 6 and abs(ann["fps"] - 3.0) < 0.6  # 2 s at 6 fps kept at ~3 fps
    dm = VideoTextDataModule(data_dir=str(out), cache_dir=str(tmp_path), image_size=32, max_frames=4,
                             max_tokens=512, shuffle=False)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    ids = [i for b in batches for i in b["sample_ids"]]
    assert ids == ["clip_a", "line00000002", "b"]
    videos = [v for b in batches for v in b["videos"]]
    assert [tuple(v.shape) for v in videos] == [(4, 3, 32, 32)] * 3
    first = videos[0]
    assert first[0, 0].mean() < first[-1, 0].mean()  # the red bar grows over time
    assert batches[0]["meta"][0]["task"] == "real"
