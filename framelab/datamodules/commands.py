"""`framelab data ...`: build and inspect datasets.

    framelab data synth --task describe --out DIR --samples 1000 --shards 8 [--split train|...|all]
                        [--format npy|png|jpg] [--param key=value ...] [--world-seed 0]
    framelab data synth --task all --out DIR ...       (one sub-folder per task)
    framelab data pack --videos DIR --annotations FILE.jsonl --out DIR [--fps 2] [--max-frames 64]
                       [--size 224] [--format jpg] [--samples-per-shard 256] [--max-bad-fraction 0.1]
                       [--record-timeout 120]
        --out may be remote: 'pipe:aws s3 cp - s3://bucket/set/{name}' ({name}: each file's name)
    framelab data info DIR | URL                        (summary of a shard set's manifest; a URL of
                                                         its manifest.json, the template it was
                                                         packed to, or shard URLs / a brace pattern)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from framelab.errors import UserError, check_writable
from framelab.world.scene import SPLITS
from framelab.world.tasks import TASKS


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param expects key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="framelab data", description="Build and inspect datasets.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="generate procedural-world shards")
    s.add_argument("--task", required=True, choices=TASKS + ("all",))
    s.add_argument("--out", required=True, help="output folder (sub-folders per task/split when 'all')")
    s.add_argument("--samples", type=int, required=True, help="samples per task and split")
    s.add_argument("--shards", type=int, default=1, help="tar files per task and split")
    s.add_argument("--split", default="train", choices=SPLITS + ("all",))
    s.add_argument("--format", default="npy", choices=("npy", "png", "jpg"),
                   help="frames as one array per sample (npy) or one image file per frame")
    s.add_argument("--param", type=_param, action="append", default=[],
                   help="task parameter as key=value (JSON value), e.g. --param 'lengths=[64,2048]'")
    s.add_argument("--world-seed", type=int, default=0)
    s.add_argument("--no-progress", action="store_true")
    k = sub.add_parser("pack", help="convert real videos + conversation annotations to shards")
    k.add_argument("--videos", required=True, help="folder the annotation paths are relative to")
    k.add_argument("--annotations", required=True, help="JSONL (or JSON list) of LLaVA-Video/ShareGPT records")
    k.add_argument("--out", required=True, help="output folder, or a remote target with {name}, e.g. "
                   "'pipe:aws s3 cp - s3://bucket/set/{name}'")
    k.add_argument("--fps", type=float, default=2.0, help="frames kept per second of video")
    k.add_argument("--max-frames", type=int, default=64, help="cap on kept frames (spread uniformly)")
    k.add_argument("--size", type=int, default=224, help="shorter side after resizing (0 = keep)")
    k.add_argument("--format", default="jpg", choices=("npy", "png", "jpg"))
    k.add_argument("--samples-per-shard", type=int, default=256)
    k.add_argument("--max-bad-fraction", type=float, default=0.1,
                   help="exit with status 1 when more than this fraction of records is skipped")
    k.add_argument("--split", default="train", help="split name recorded in the manifest")
    k.add_argument("--record-timeout", type=float, default=120.0,
                   help="seconds one record's video may take to decode before it is skipped as "
                        "'timeout' (0 = no limit)")
    k.add_argument("--no-progress", action="store_true")
    i = sub.add_parser("info", help="summarise a shard set (a folder or URLs)")
    i.add_argument("folder", help="a shard folder, the URL of a manifest.json, a {name} template, or shard URLs")
    return p


def _synth(a) -> int:
    from framelab.datamodules.synth import synthesize
    tasks = TASKS if a.task == "all" else (a.task,)
    if a.param and len(tasks) > 1:
        raise UserError("--param applies to one task; run `framelab data synth --task NAME --param ...` per task")
    splits = SPLITS if a.split == "all" else (a.split,)
    check_writable(a.out, "--out")
    for task in tasks:
        for split in splits:
            out = Path(a.out)
            if len(tasks) > 1:
                out = out / task
            if len(splits) > 1:
                out = out / split
            params = dict(a.param)
            m = synthesize(task, out, a.samples, a.shards, split, params, a.format, a.world_seed,
                           progress=not a.no_progress)
            print(f"{task}/{split}: {m['samples']} samples in {len(m['shards'])} shards -> {out} "
                  f"(recipe {m['recipe_version']})")
    return 0


def _pack(a) -> int:
    from framelab.datamodules.pack import PackOptions, pack
    from framelab.datamodules.targets import is_remote_target
    opts = PackOptions(fps=a.fps, max_frames=a.max_frames, size=a.size, frames_format=a.format,
                       samples_per_shard=a.samples_per_shard, max_bad_fraction=a.max_bad_fraction,
                       split=a.split, progress=not a.no_progress, record_timeout=a.record_timeout)
    remote = is_remote_target(a.out)
    if not remote:
        check_writable(a.out, "--out")
    report = pack(a.videos, a.annotations, a.out, opts)
    print(report.summary())
    if report.bad_fraction > a.max_bad_fraction:
        where = a.out.replace("{name}", "pack_report.json") if remote else Path(a.out) / "pack_report.json"
        print(f"framelab data pack: error: {report.bad_fraction:.1%} of records skipped, more than "
              f"--max-bad-fraction {a.max_bad_fraction:.1%}; see {where}")
        return 1
    return 0


def _remote_info(target: str) -> dict:
    """A remote set's manifest, or for shard URLs without one, their index summed up."""
    from framelab.datamodules.remote import RemoteShard, expand, is_manifest_url, remote_manifest, resolve
    from framelab.datamodules.shard_cache import CacheConfig
    from framelab.datamodules.synth import resolve_cache_dir
    entries = expand(target)
    if len(entries) == 1 and is_manifest_url(entries[0]):
        return remote_manifest(entries[0], 60.0)
    cache = CacheConfig(resolve_cache_dir(None) / "shards", 10**15, timeout=600.0)
    shards = [s for s in resolve(entries, cache, 600.0) if isinstance(s, RemoteShard)]
    if not shards:
        raise UserError(f"{target}: no remote shards; give a URL, a brace pattern of them or a folder")
    return {"samples": sum(len(s.samples) for s in shards),
            "shards": [{"name": s.url, "samples": s.samples, "bytes": s.bytes} for s in shards]}


def _info(a) -> int:
    from framelab.datamodules.remote import is_remote
    from framelab.datamodules.shards import read_manifest
    if is_remote(a.folder) or "{" in a.folder:
        m = _remote_info(a.folder)
    else:
        m = read_manifest(a.folder)
    if m is None:
        raise UserError(f"{a.folder} has no manifest.json; give a folder written by `framelab data synth` or `pack`")
    shown = {k: v for k, v in m.items() if k != "shards"}
    shown["shards"] = [f"{s['name']} ({len(s['samples'])} samples, {s.get('bytes', '?')} bytes)"
                       for s in m["shards"]]
    print(json.dumps(shown, indent=1))
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return {"synth": _synth, "pack": _pack, "info": _info}[args.command](args)
