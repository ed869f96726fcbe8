"""`framelab agent`: run the video agent on one video and print its trajectory turn by turn.

    framelab agent --ckpt CKPT --video FILE.mp4 --question "When is the red circle visible?"
    framelab agent --ckpt CKPT --shard needle-val-000000.tar [--index 3]   # a world sample
    framelab agent --ckpt CKPT --world val:3 [--length 1024]               # generated on the spot
    ... --json trajectory.json    (the trajectory as data)   --max-turns N   --temperature T

The checkpoint is an agent (`experiment=agent_sft` / `agent_rl`) or any video-LLM checkpoint of the
world tokenizer; the tokenizer is read from the cache (FRAMELAB_CACHE, else ./data_cache, as
`framelab fit` does) or `--tokenizer FILE`. A video file is decoded at `--fps` (default 8) up to
`--max-frames` frames and resized to the agent's frame size (`--size`, default 64, the size the
default run's tower learns at).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch

from framelab.agent.data import FRAME_SIZE
from framelab.errors import UserError


def load_agent(ckpt: str, tokenizer_path: str | None = None):
    """(model in eval mode, tokenizer) from a checkpoint of a MultimodalLM module."""
    from framelab import checkpoints
    from framelab.datamodules.special_tokens import VIDEO_PAD
    from framelab.datamodules.tokenizer import ensure_tokenizer
    from framelab.models.config import ModelConfig
    from framelab.models.multimodal import MultimodalLM

    if not Path(ckpt).exists():
        raise UserError(f"--ckpt {ckpt}: no such file; give a checkpoint of `framelab fit "
                        "experiment=agent_sft` (RUN/checkpoints/last.ckpt)")
    source = checkpoints.read_weights(ckpt, "--ckpt")
    spec = source["spec"]
    if VIDEO_PAD not in spec.get("tokens", {}) or not spec["config"].get("vision"):
        raise UserError(f"--ckpt {ckpt}: a {spec.get('module')} checkpoint without a vision "
                        "tower; give an agent or video-LLM checkpoint")
    config = ModelConfig.from_dict(spec["config"])
    model = MultimodalLM(config, spec["tokens"][VIDEO_PAD])
    checkpoints.load_weights(model, source, None, f"--ckpt {ckpt}")
    cache = os.environ.get("FRAMELAB_CACHE", "data_cache")
    tok = ensure_tokenizer(cache, tokenizer_path, 1024)
    for name, i in spec["tokens"].items():
        if tok.token_to_id(name) != i:
            raise UserError(f"--ckpt {ckpt}: token {name} has id {i} in the checkpoint but "
                            f"{tok.token_to_id(name)} in the tokenizer; pass --tokenizer FILE")
    return model.eval(), tok


def resize(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, size, size) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            align_corners=False)
    return x


def read_video(path: str, fps: float, max_frames: int, size: int) -> tuple[torch.Tensor, float]:
    from framelab.datamodules.media import MediaError, load_media

    try:
        clip = load_media(Path(path), fps, max_frames, size)
    except MediaError as e:
        raise UserError(f"--video {path}: {e}; give a readable video file (mp4, webm, ...), an "
                        "image or a folder of frames") from None
    if clip.frames.shape[0] < 2:
        raise UserError(f"--video {path}: {clip.frames.shape[0]} frame(s); the agent needs a video")
    return resize(clip.frames, size), float(clip.fps or fps)


def read_shard(path: str, index: int) -> dict:
    """Sample `index` of a world shard (`framelab data synth` / the fit cache): frames, fps,
    question (the first user turn) and meta."""
    try:
        with tarfile.open(path) as tar:
            names = sorted({m.name.split(".", 1)[0] for m in tar.getmembers()})
            if not 0 <= index < len(names):
                raise UserError(f"--shard {path}: --index {index} but the shard has "
                                f"{len(names)} samples")
            key = names[index]
            doc = json.loads(tar.extractfile(f"{key}.json").read())
            frames = np.load(io.BytesIO(tar.extractfile(f"{key}.npy").read()))
    except (tarfile.TarError, OSError, KeyError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"--shard {path}: {type(e).__name__}: {why}; give a world shard with npy "
                        "frames (framelab data synth --task needle)") from None
    question = doc["conversations"][0]["content"].replace("<video>\n", "").replace("<video>", "")
    return {"frames": frames, "fps": float(doc["fps"]), "question": question,
            "meta": dict(doc["meta"]), "key": doc["key"]}


def print_trajectory(traj, out=sys.stdout) -> None:
    from framelab.agent.loop import split_call

    print(f"question: {traj.question}", file=out)
    for t, turn in enumerate(traj.turns, 1):
        note, call = split_call(turn.text)
        if note and call is not None:
            print(f"[turn {t}] {note}", file=out)       # what it wrote before its call
        what = turn.call if turn.call is not None else turn.text.strip()
        print(f"[turn {t}]{' (forced)' if turn.forced else ''} {what}", file=out)
        if turn.result is not None:
            extra = f"  [{turn.frames} frames]" if turn.frames else ""
            print(f"   -> {turn.result}{extra}", file=out)
    print(f"answer: {traj.answer}", file=out)


def main(argv: list[str]) -> int:
    from framelab.agent.data import as_tensor, episode
    from framelab.agent.loop import AgentConfig, run_agent

    p = argparse.ArgumentParser(prog="framelab agent", description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="a video file (or image folder)")
    src.add_argument("--shard", help="a world shard (.tar); --index picks the sample")
    src.add_argument("--world", help="SPLIT:INDEX of the needle task, generated on the spot")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--length", type=int, default=512, help="--world: haystack frames")
    p.add_argument("--question", help="required with --video; a shard's own question otherwise")
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--max-frames", type=int, default=2048)
    p.add_argument("--size", type=int, default=FRAME_SIZE,
                   help="frame side in pixels: the one the agent trained at")
    p.add_argument("--max-turns", type=int, default=AgentConfig.max_turns)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--features", choices=("tower", "pixels"), default="tower",
                   help="search features (pixels: a diagnostic, see docs/agent.md)")
    p.add_argument("--json", default=None, help="write the trajectory here")
    args = p.parse_args(argv)
    meta = {}
    if args.video:
        if not args.question:
            raise UserError("--video needs --question \"...\"")
        frames, fps = read_video(args.video, args.fps, args.max_frames, args.size)
        question = args.question
    else:
        if args.shard:
            ep = read_shard(args.shard, args.index)
        else:
            split, _, idx = args.world.partition(":")
            if split not in ("train", "val", "test", "ood") or not idx.isdigit():
                raise UserError(f"--world {args.world}: expected SPLIT:INDEX, e.g. val:3")
            ep = episode(split, int(idx), {"lengths": [args.length], "size": args.size})
        frames, fps = as_tensor(ep["frames"]), ep["fps"]
        question, meta = args.question or ep["question"], ep["meta"]
    if args.max_turns < 1:
        raise UserError(f"--max-turns {args.max_turns}: expected at least 1")
    model, tok = load_agent(args.ckpt, args.tokenizer)
    gen = torch.Generator().manual_seed(args.seed)
    traj = run_agent(model, tok, frames, fps, question,
                     AgentConfig(max_turns=args.max_turns, temperature=args.temperature,
                                 index=args.features),
                     generator=gen, meta={k: meta[k] for k in ("answer", "spans", "qtype")
                                          if k in meta})
    print_trajectory(traj)
    if meta.get("answer") is not None:
        print(f"reference: {meta['answer']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(traj.to_json())
        print(f"wrote {args.json}")
    return 0
