"""`framelab bench vl`: a Qwen3-VL training step, framelab vs transformers — tokens/s and peak memory.

Both sides are the same small Qwen3-VL configuration (`SHAPE`: Qwen3-VL's vocabulary and layout,
narrow and shallow so a CPU runs it) with the same weights: transformers'
`Qwen3VLForConditionalGeneration` (SDPA attention) is built from a seed, saved, and loaded into
framelab with `load_hf`. Each row of the batch is text around one video given as transformers'
`pixel_values_videos` + `video_grid_thw`, laid out as Qwen3-VL's processor writes it (a timestamp
and a placeholder run per temporal step); the vision placeholders carry no loss. One training step
is forward (vision tower, DeepStack, LM), next-token loss, backward and an AdamW step: framelab
computes the loss from hidden states with its fused linear-cross-entropy, transformers with its
`labels=` path. Before timing, the two losses on the same batch are compared.
Speed: both models in this process, timed alternately, median of `--repeat` steps.
Peak memory: of a steady-state step (the second: the first creates AdamW's state, the same on both
sides): on CUDA `max_memory_allocated` above the memory before it; on CPU each side runs in a fresh
subprocess and reports its peak resident memory during the step above the resident memory before.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile

import torch

from framelab.benchmarks._common import (machine, peak_in_subprocess, print_table,
                                         step_peak_bytes, time_alternately, write_json)
from framelab.models.hf_qwen3_vl import DEFAULT_TOKENS

SHAPE = {"vocab": 151936, "hidden": 512, "layers": 4, "heads": 8, "kv_heads": 4, "head_dim": 64,
         "intermediate": 1536, "vision_depth": 4, "vision_width": 256, "vision_heads": 4,
         "vision_intermediate": 1024, "deepstack": [1, 2, 3]}
QUICK_SHAPE = {"vocab": 2048, "hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 16,
               "intermediate": 128, "vision_depth": 2, "vision_width": 32, "vision_heads": 2,
               "vision_intermediate": 64, "deepstack": [0, 1]}


def special_tokens(shape: dict) -> dict:
    """Qwen3-VL's vision token ids, or the last four ids of a smaller vocabulary."""
    if shape["vocab"] > max(DEFAULT_TOKENS.values()):
        return dict(DEFAULT_TOKENS)
    return {name: shape["vocab"] - 4 + i for i, name in enumerate(DEFAULT_TOKENS)}


def hf_config(shape: dict):
    from transformers import Qwen3VLConfig

    pairs = shape["head_dim"] // 2                         # Qwen3-VL's t/h/w split, scaled
    section = [pairs - 2 * (pairs * 5 // 16), pairs * 5 // 16, pairs * 5 // 16]
    return Qwen3VLConfig(
        text_config=dict(vocab_size=shape["vocab"], hidden_size=shape["hidden"],
                         intermediate_size=shape["intermediate"],
                         num_hidden_layers=shape["layers"],
                         num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["kv_heads"], head_dim=shape["head_dim"],
                         rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                                          "mrope_section": section, "mrope_interleaved": True}),
        vision_config=dict(depth=shape["vision_depth"], hidden_size=shape["vision_width"],
                           intermediate_size=shape["vision_intermediate"],
                           num_heads=shape["vision_heads"], patch_size=16,
                           out_hidden_size=shape["hidden"], num_position_embeddings=2304,
                           deepstack_visual_indexes=shape["deepstack"]),
        tie_word_embeddings=True, **special_tokens(shape))


def build(shape: dict):
    """(transformers model, framelab model with the same weights), both in train mode."""
    from transformers import Qwen3VLForConditionalGeneration

    from framelab.models import load_hf

    torch.manual_seed(0)
    cfg = hf_config(shape)
    cfg._attn_implementation = "sdpa"
    theirs = Qwen3VLForConditionalGeneration(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        theirs.save_pretrained(tmp)
        ours = load_hf(tmp)
    with torch.no_grad():  # resident copies, not pages of the saved file read in on first touch
        for t in [*ours.parameters(), *ours.buffers()]:
            t.data = t.data.clone()
    return theirs.train(), ours.train()


def batch(shape: dict, rows: int, seq: int, frames: int, size: int, seed: int = 0) -> dict:
    """Token ids, labels (-100 at vision placeholders) and video patches of `rows` rows of `seq`
    tokens, each holding one video of `frames` frames of size x size pixels."""
    g = torch.Generator().manual_seed(seed)
    tok = special_tokens(shape)
    vs, ve, vid = (tok[k] for k in ("vision_start_token_id", "vision_end_token_id",
                                    "video_token_id"))
    t, h, w = frames // 2, size // 16, size // 16
    run = []
    for step in range(t):              # "<t seconds>" as two text tokens, then the step's run
        run += [100 + step, 200 + step, vs] + [vid] * (h * w // 4) + [ve]
    if len(run) + 8 > seq:
        raise SystemExit(f"framelab bench vl: --seq {seq} is too short for a video of {frames} "
                         f"frames at {size} px ({len(run)} tokens); raise --seq")
    ids = torch.randint(0, min(shape["vocab"] - 8, 150000), (rows, seq), generator=g)
    ids[:, 4:4 + len(run)] = torch.tensor(run)
    labels = ids.masked_fill((ids == vid) | (ids == vs) | (ids == ve), -100)
    patches = torch.randn(rows * t * h * w, 3 * 2 * 16 * 16, generator=g)
    return {"input_ids": ids, "labels": labels, "pixel_values_videos": patches,
            "video_grid_thw": torch.tensor([(t, h, w)] * rows)}


def loss_fn(side: str, model, inputs: dict):
    from framelab.kernels import linear_cross_entropy

    vision = {k: inputs[k] for k in ("pixel_values_videos", "video_grid_thw")}
    if side == "framelab":
        hidden = model.hidden_states(inputs["input_ids"], **vision)
        return linear_cross_entropy(hidden[:, :-1], model.lm.output_weight,
                                    inputs["labels"][:, 1:])
    types = (inputs["input_ids"] == model.config.video_token_id).long() * 2
    return model(input_ids=inputs["input_ids"], labels=inputs["labels"], mm_token_type_ids=types,
                 **vision).loss


def step_fn(side: str, model, inputs: dict):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = loss_fn(side, model, inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss
    return step


def _shape(args) -> dict:
    return QUICK_SHAPE if args.quick else SHAPE


def _inputs(args, device) -> dict:
    return {k: v.to(device) for k, v in
            batch(_shape(args), args.batch, args.seq, args.frames, args.size).items()}


def measure_memory(side: str, args) -> int:
    """Peak bytes of a steady-state training step of `side`, after one step has created the
    optimizer's state (this process must be fresh on CPU)."""
    theirs, ours = build(_shape(args))
    model = ours if side == "framelab" else theirs
    ours = theirs = None  # keep only the measured model alive
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    step = step_fn(side, model, _inputs(args, device))
    step()
    return step_peak_bytes(step)


def parse(argv: list[str]):
    p = argparse.ArgumentParser(prog="framelab bench vl", description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=512, help="tokens per row (text + one video)")
    p.add_argument("--frames", type=int, default=8, help="video frames per row (even)")
    p.add_argument("--size", type=int, default=224, help="frame side in pixels (multiple of 32)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--quick", action="store_true",
                   help="a tiny shape (QUICK_SHAPE), 96 tokens, 2 frames of 64 px: checks it runs")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.seq, args.frames, args.size, args.repeat = 96, 2, 64, min(args.repeat, 2)
    if args.frames < 2 or args.frames % 2 or args.size % 32:
        p.error("--frames must be even and --size a multiple of 32 (2x2 merge of 16 px patches)")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.memory_of:
        print(json.dumps({"peak_bytes": measure_memory(args.memory_of, args)}))
        return 0
    shape = _shape(args)
    theirs, ours = build(shape)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ours.to(device), theirs.to(device)
    inputs = _inputs(args, device)
    with torch.no_grad():
        losses = {side: float(loss_fn(side, m, inputs))
                  for side, m in (("framelab", ours), ("transformers", theirs))}
    loss_diff = abs(losses["framelab"] - losses["transformers"])
    if not loss_diff <= 1e-3:                                   # NaN fails too
        raise SystemExit(f"framelab bench vl: the two models' losses differ by {loss_diff:.2e} "
                         "on the same batch; the comparison would not be like for like")
    steps = {"framelab": step_fn("framelab", ours, inputs),
             "transformers": step_fn("transformers", theirs, inputs)}
    tokens = inputs["input_ids"].numel()
    median = time_alternately(steps, args.repeat)
    peaks = {}
    if not args.no_memory:
        flags = ["--batch", str(args.batch), "--seq", str(args.seq), "--frames",
                 str(args.frames), "--size", str(args.size)] + (["--quick"] if args.quick else [])
        for name in steps:
            peaks[name] = (measure_memory(name, args) if device == "cuda" else
                           peak_in_subprocess("framelab.benchmarks.vl",
                                              [*flags, "--memory-of", name]))
    rows = [{"model": name, "tokens/s": f"{tokens / median[name]:.0f}",
             "step ms": f"{median[name] * 1e3:.1f}",
             "peak MiB": f"{peaks[name] / 2**20:.1f}" if peaks else "-"} for name in steps]
    grid = (args.frames // 2, args.size // 16, args.size // 16)
    print(f"Qwen3-VL training step: text {shape['hidden']} wide x {shape['layers']} layers, "
          f"vision {shape['vision_width']} x {shape['vision_depth']}, vocab {shape['vocab']}; "
          f"batch {args.batch} x {args.seq} tokens, one video of grid {grid} per row, "
          f"on {machine()}")
    print_table(rows, ["model", "tokens/s", "step ms", "peak MiB"])
    speedup = median["transformers"] / median["framelab"]
    memory_ratio = (peaks["framelab"] / peaks["transformers"]
                    if peaks and peaks["transformers"] else None)
    print(f"loss difference before training {loss_diff:.1e}; speedup vs transformers (SDPA): "
          f"{speedup:.2f}x" + (f"; peak memory ratio framelab/transformers: {memory_ratio:.2f}"
                               if memory_ratio is not None else ""))
    write_json(args.json, {
        "benchmark": "vl", "machine": machine(), "shape": shape, "batch": args.batch,
        "seq": args.seq, "video_grid_thw": grid, "loss_diff": loss_diff,
        "tokens_per_s": {k: tokens / v for k, v in median.items()},
        "peak_bytes": peaks, "speedup": speedup, "memory_ratio": memory_ratio})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
