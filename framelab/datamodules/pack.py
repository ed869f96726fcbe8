"""`framelab data pack`: real videos + conversation annotations -> framelab shards.

Annotations are JSONL (or a JSON list), one record per sample, in either style:
- LLaVA-Video: {"id", "video": "rel/path.mp4" (or "image"), "conversations": [{"from": "human" |
  "gpt" | "system", "value": "<video>\\n..."}]}
- ShareGPT (LLaMA-Factory): {"messages": [{"role": "user" | "assistant" | "system", "content"}],
  "videos": ["rel/path.mp4"]} (or "images").
Media paths are relative to --videos; a path may be a video file, an image, or a folder of frames.
Records that cannot be used are skipped and counted per reason (malformed, missing_file,
undecodable, timeout: decoding took longer than --record-timeout); the report names the first few
offenders of each reason and is also written to OUT/pack_report.json. An annotation file without
any record, or options out of range, are a UserError. OUT may be remote: a URL template with
`{name}`, e.g. `pipe:aws s3 cp - s3://bucket/set/{name}` (targets.py).
"""
from __future__ import annotations

import itertools
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from framelab.datamodules.media import DecodeTimeout, MediaError, load_media, time_limit
from framelab.datamodules.shards import ShardWriter, encode_frames, shard_entry, write_manifest
from framelab.datamodules.targets import Target
from framelab.errors import UserError

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "system": "system", "model": "assistant"}


@dataclass
class PackOptions:
    fps: float = 2.0
    max_frames: int = 64
    size: int = 224
    frames_format: str = "jpg"
    samples_per_shard: int = 256
    max_bad_fraction: float = 0.1
    split: str = "train"
    progress: bool = True
    examples: int = 5       # offenders named per reason
    record_timeout: float = 120.0   # seconds one record's media may take to decode (0: no limit)

    def check(self) -> None:
        """A UserError naming the first option out of range."""
        rules = [("--fps", self.fps, self.fps > 0, "a number > 0"),
                 ("--max-frames", self.max_frames, self.max_frames >= 1, "an integer >= 1"),
                 ("--size", self.size, self.size >= 0, "an integer >= 0 (0 keeps the size)"),
                 ("--samples-per-shard", self.samples_per_shard, self.samples_per_shard >= 1, "an integer >= 1"),
                 ("--max-bad-fraction", self.max_bad_fraction, 0 <= self.max_bad_fraction <= 1,
                  "a fraction in [0, 1]"),
                 ("--record-timeout", self.record_timeout, self.record_timeout >= 0,
                  "seconds >= 0 (0: no limit)")]
        for flag, value, ok, expected in rules:
            if not ok:
                raise UserError(f"{flag} {value}: expected {expected}")


@dataclass
class PackReport:
    total: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=lambda: defaultdict(list))

    @property
    def bad_fraction(self) -> float:
        return sum(self.skipped.values()) / self.total if self.total else 1.0

    def skip(self, reason: str, where: str, limit: int) -> None:
        self.skipped[reason] += 1
        if len(self.examples[reason]) < limit:
            self.examples[reason].append(where)

    def as_dict(self) -> dict:
        return {"total": self.total, "written": self.written, "skipped": dict(self.skipped),
                "bad_fraction": round(self.bad_fraction, 4), "examples": dict(self.examples)}

    def summary(self) -> str:
        lines = [f"packed {self.written} of {self.total} records ({sum(self.skipped.values())} skipped)"]
        for reason, n in self.skipped.most_common():
            lines.append(f"  {reason}: {n}, e.g. " + "; ".join(self.examples[reason]))
        return "\n".join(lines)


class Malformed(Exception):
    pass


def read_records(path: Path):
    """(line number, record dict or Malformed) for each record of a JSONL or JSON-list file (JSONL
    is read line by line, so its size does not matter)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(4096)
        if path.suffix == ".json" and head.lstrip().startswith("["):
            try:
                records = json.loads(head + f.read())
            except json.JSONDecodeError as e:
                raise UserError(f"{path} is not valid JSON ({e}); give JSONL or a JSON list of records") from None
            yield from ((i + 1, r) for i, r in enumerate(records))
            return
        f.seek(0)
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                yield i, Malformed(f"bad JSON: {e.msg}")


def normalise(record) -> tuple[str | None, str, list]:
    """(id, media path, [{"role", "content"}]) of a record in either supported style."""
    if isinstance(record, Malformed):
        raise record
    if not isinstance(record, dict):
        raise Malformed("record is not a JSON object")
    turns = record.get("conversations", record.get("messages"))
    if not isinstance(turns, list) or not turns:
        raise Malformed("no 'conversations' or 'messages' list")
    conv = []
    for t in turns:
        role = t.get("from", t.get("role")) if isinstance(t, dict) else None
        content = t.get("value", t.get("content")) if isinstance(t, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise Malformed(f"turn without a known role and text content: {str(t)[:60]}")
        conv.append({"role": ROLES[role], "content": content})
    if not any(t["role"] == "assistant" for t in conv):
        raise Malformed("no assistant turn")
    media = record.get("video", record.get("image"))
    if media is None:
        listed = record.get("videos", record.get("images"))
        media = listed[0] if isinstance(listed, list) and len(listed) == 1 else listed
    if not isinstance(media, str) or not media:
        raise Malformed("needs exactly one video/image path ('video', 'image', 'videos' or 'images')")
    rid = record.get("id")
    return (None if rid is None else str(rid)), media, conv


def _key(rid: str | None, line: int, used: set) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]", "_", rid) if rid else f"line{line:08d}"
    key, n = base, 1
    while key in used:
        key, n = f"{base}_{n}", n + 1
    used.add(key)
    return key


def pack(videos: str, annotations: str, out: str, opts: PackOptions) -> PackReport:
    """Convert; returns the report (also written to OUT/pack_report.json)."""
    videos_dir, ann_path = Path(videos), Path(annotations)
    if not videos_dir.is_dir():
        raise UserError(f"--videos {videos_dir} is not a folder; give the folder the annotation paths are relative to")
    if not ann_path.is_file():
        raise UserError(f"--annotations {ann_path} not found; give a JSONL file of conversation records")
    opts.check()
    records = read_records(ann_path)
    first = next(records, None)
    if first is None:
        raise UserError(f"--annotations {ann_path} holds no records; give a JSONL file with one "
                        "conversation record per line (or a .json list of them)")
    target = Target(out)
    try:
        return _pack(records, first, videos_dir, ann_path, target, opts)
    finally:
        target.close()


def _pack(records, first, videos_dir: Path, ann_path: Path, target: Target, opts: PackOptions) -> PackReport:
    root = target.root
    report, used, entries = PackReport(), set(), []
    writer, shard = None, 0
    for line, record in tqdm(itertools.chain([first], records), desc="pack", unit="record",
                             disable=not opts.progress):
        report.total += 1
        try:
            rid, media, conv = normalise(record)
            with time_limit(opts.record_timeout):
                clip = load_media(videos_dir / media, opts.fps, opts.max_frames, opts.size)
        except Malformed as e:
            report.skip("malformed", f"line {line}: {e}", opts.examples)
            continue
        except MediaError as e:
            report.skip(e.reason, f"line {line}: {media}" + (f" ({e.detail[:120]})" if e.reason != "missing_file" else ""),
                        opts.examples)
            continue
        except DecodeTimeout as e:
            report.skip("timeout", f"line {line}: {media} ({e})", opts.examples)
            continue
        key = _key(rid, line, used)
        ann = {"key": key, "task": record.get("task", "real"), "split": opts.split, "source": media,
               "fps": clip.fps, "source_fps": clip.source_fps, "duration": clip.duration,
               "num_frames": int(clip.frames.shape[0]), "conversations": conv,
               "meta": {"id": rid, "line": line, **(record.get("meta") or {})}}
        if writer is None:
            writer = ShardWriter(root / f"real-{opts.split}-{shard:06d}.tar")
        writer.write(key, {"json": json.dumps(ann).encode(), **encode_frames(clip.frames, opts.frames_format)})
        report.written += 1
        if writer.count == opts.samples_per_shard:
            writer.close()
            entries.append(shard_entry(writer, root))
            target.publish(writer.path)
            writer, shard = None, shard + 1
    if writer is not None:
        writer.close()
        entries.append(shard_entry(writer, root))
        target.publish(writer.path)
    (root / "pack_report.json").write_text(json.dumps(report.as_dict(), indent=1))
    target.publish(root / "pack_report.json")
    if report.written:
        target.publish(write_manifest(root, {"created_by": "framelab data pack", "split": opts.split,
                              "source": str(ann_path), "frames_format": opts.frames_format,
                              "samples": report.written, "counts": {"skipped": dict(report.skipped)},
                              "options": {"fps": opts.fps, "max_frames": opts.max_frames, "size": opts.size},
                              "shards": entries}))
    return report
