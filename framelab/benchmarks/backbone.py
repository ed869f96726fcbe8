"""`framelab bench backbone`: training-step throughput and peak memory, framelab vs transformers.

Both sides are the same Qwen3 shape with the same weights and inputs; one training step is
forward, next-token loss, backward and an AdamW step. framelab computes the loss with its fused
linear-cross-entropy from hidden states; transformers with its own `labels=` path (SDPA attention).
Speed: both models in this process, timed alternately, median of `--repeat` steps.
Peak memory: on CUDA, `max_memory_allocated` of one step; on CPU, each side runs in a fresh
subprocess (fixed malloc mmap threshold, so freed tensors return to the OS) and reports its peak
resident memory during one step above the resident memory before it.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from framelab.benchmarks._common import (machine, peak_in_subprocess, print_table,
                                         step_peak_bytes, time_alternately, write_json)


def build(preset_name: str, vocab: int | None, layers: int | None):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from framelab.models import DecoderLM, preset
    from framelab.models.hf import config_to_hf

    overrides = {k: v for k, v in (("vocab_size", vocab), ("layers", layers)) if v}
    cfg = preset(preset_name, **overrides)
    torch.manual_seed(0)
    ours = DecoderLM(cfg)
    hf_cfg = Qwen3Config(**config_to_hf(cfg))
    hf_cfg._attn_implementation = "sdpa"
    theirs = Qwen3ForCausalLM(hf_cfg)
    state = {(k if k.startswith("lm_head") else f"model.{k}"): v
             for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state, strict=not cfg.tie_embeddings)
    if cfg.tie_embeddings:
        theirs.tie_weights()
    return cfg, ours, theirs


def step_fn(side: str, model, ids: torch.Tensor):
    from framelab.kernels import linear_cross_entropy

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        if side == "framelab":
            hidden = model.hidden_states(ids)
            loss = linear_cross_entropy(hidden[:, :-1], model.output_weight, ids[:, 1:])
        else:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss
    return step


def measure_memory(side: str, args) -> int:
    """Peak bytes of one training step of `side` (this process must be fresh on CPU)."""
    cfg, ours, theirs = build(args.preset, args.vocab, args.layers)
    model = ours if side == "framelab" else theirs
    ours = theirs = None  # keep only the measured model alive
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=device)
    return step_peak_bytes(step_fn(side, model, ids))


def memory_in_subprocess(side: str, args) -> int:
    argv = ["--preset", args.preset, "--batch", str(args.batch), "--seq", str(args.seq)]
    for flag, value in (("--vocab", args.vocab), ("--layers", args.layers)):
        if value:
            argv += [flag, str(value)]
    return peak_in_subprocess("framelab.benchmarks.backbone", [*argv, "--memory-of", side])


def parse(argv: list[str]):
    p = argparse.ArgumentParser(prog="framelab bench backbone", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small", help="model preset (framelab.models.PRESETS)")
    p.add_argument("--vocab", type=int, default=None, help="override the preset's vocabulary")
    p.add_argument("--layers", type=int, default=None, help="override the preset's depth")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.memory_of:
        print(json.dumps({"peak_bytes": measure_memory(args.memory_of, args)}))
        return 0
    cfg, ours, theirs = build(args.preset, args.vocab, args.layers)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ours.to(device), theirs.to(device)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=device)
    steps = {"framelab": step_fn("framelab", ours, ids), "transformers": step_fn("hf", theirs, ids)}
    tokens = args.batch * args.seq
    median = time_alternately(steps, args.repeat)
    peaks = {}
    for name, side in (("framelab", "framelab"), ("transformers", "hf")):
        if device == "cuda":
            peaks[name] = measure_memory(side, args)
        else:
            peaks[name] = memory_in_subprocess(side, args)
    rows = [{"model": name, "tokens/s": f"{tokens / median[name]:.0f}",
             "step ms": f"{median[name] * 1e3:.1f}",
             "peak MiB": f"{peaks[name] / 2**20:.1f}"} for name in steps]
    print(f"backbone training step: preset {args.preset} (vocab {cfg.vocab_size}, "
          f"{cfg.layers} layers), batch {args.batch} × {args.seq} tokens, on {machine()}")
    print_table(rows, ["model", "tokens/s", "step ms", "peak MiB"])
    speedup = median["transformers"] / median["framelab"]
    memory_ratio = peaks["framelab"] / peaks["transformers"]
    print(f"speedup vs transformers (SDPA): {speedup:.2f}x; peak memory ratio "
          f"framelab/transformers: {memory_ratio:.2f}")
    write_json(args.json, {
        "benchmark": "backbone", "machine": machine(), "preset": args.preset,
        "vocab_size": cfg.vocab_size, "layers": cfg.layers, "batch": args.batch, "seq": args.seq,
        "tokens_per_s": {k: tokens / v for k, v in median.items()},
        "peak_bytes": peaks, "speedup": speedup, "memory_ratio": memory_ratio})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
