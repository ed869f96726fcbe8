"""`framelab bench mla [--json PATH] [--plot PATH] [--ckpt GQA.ckpt --ranks R1 R2 R3 ...]`

1. Cache and speed (always): two decoders of equal size (same hidden, layers, heads, head_dim),
   one GQA and one M²LA. KV-cache bytes per token per layer, and greedy decode tokens/s with a
   cache already holding 1K, 4K and 16K tokens (the cache is filled with random state of the right
   shape: prefilling 16K tokens on a CPU would dominate the run, and decode cost does not depend on
   the values). `--size qwen3-8b` (or qwen3-0.6b, qwen3-1.7b) times decoders of a Qwen3 preset's
   shape with InternVideo3's M²LA cache (GPU-sized). JSON: `kv_bytes_ratio` = GQA bytes / M²LA
   bytes, `decode` rows with `speedup`.
2. Accuracy vs rank (with --ckpt, a trained video-LLM GQA checkpoint of experiment=videollm_sft):
   `framelab validate` of the GQA model; of M²LA converted at each rank R (right after
   `framelab convert mla`); and after `--recover-steps` of `framelab fit ... init_from=` recovery
   fine-tuning. Metrics: val/mcq_acc/describe, val/mcq_named_acc/describe (rationale replies:
   the named option is right) and val/accuracy.
A plot (decode tokens/s and cache size vs context) goes to --plot (default bench_mla.png).
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from framelab.benchmarks._common import machine, print_table, timeit, write_json
from framelab.errors import UserError
from framelab.models import DecoderLM, preset

CONTEXTS = (1024, 4096, 16384)


SIZES = ("small", "qwen3-0.6b", "qwen3-1.7b", "qwen3-8b")


def bench_models(device: str, size: str = "small", dtype: torch.dtype = torch.float32):
    """GQA and M²LA decoders of one size, random weights. `small` (the default): 512 wide, 4
    layers; its cache is GQA 2 x 4 x 64 = 512 values a token, M²LA 224 latent + 4 groups x 8
    rotary dims = 256. A Qwen3 size: the preset's shape, M²LA as in InternVideo3 (a 896-wide
    latent + 8 groups x 16 rotary dims = 1024 values, against GQA's 2 x 8 x 128 = 2048)."""
    if size == "small":
        name, shape = "tiny", dict(vocab_size=4096, hidden=512, layers=4, heads=8, kv_heads=4,
                                   head_dim=64, intermediate=1536, mrope_section=(8, 12, 12))
        latent = dict(kv_lora_rank=224, qk_rope_dim=8)
    else:
        name, shape, latent = size, {}, dict(kv_lora_rank=896, qk_rope_dim=16)
    with torch.device(device):
        gqa = DecoderLM(preset(name, **shape)).to(dtype).eval()
        mla = DecoderLM(preset(name, attention="mla", **latent, **shape)).to(dtype).eval()
    return gqa, mla


def filled_cache(model: DecoderLM, batch: int, context: int, device: str):
    """A cache holding `context` tokens of random state per layer (shapes from one real step)."""
    probe = model.new_cache(1)
    model(torch.zeros(batch, 1, dtype=torch.long, device=device), cache=probe)
    cache = model.new_cache(context + 64)
    for layer, store in enumerate(probe._store):
        cache.update(layer, *[torch.randn(batch, context, *t.shape[2:], device=device,
                                          dtype=t.dtype) * 0.1
                              for t in (s[:, :1] for s in store)])
    cache.advance(context)
    return cache, probe.bytes_per_token() // len(model.layers)


@torch.no_grad()
def decode_rate(model: DecoderLM, batch: int, context: int, steps: int, device: str):
    cache, per_layer = filled_cache(model, batch, context, device)
    token = torch.zeros(batch, 1, dtype=torch.long, device=device)
    seen = cache.seen

    def run():
        cache.seen = seen
        for _ in range(steps):
            model(token, cache=cache)
    seconds = timeit(run, warmup=2, repeat=3)
    return batch * steps / seconds, per_layer


def speed_table(contexts, batch: int, steps: int, device: str, size: str = "small",
                dtype: torch.dtype = torch.float32) -> dict:
    gqa, mla = bench_models(device, size, dtype)
    rows = []
    for ctx in contexts:
        g_rate, g_bytes = decode_rate(gqa, batch, ctx, steps, device)
        m_rate, m_bytes = decode_rate(mla, batch, ctx, steps, device)
        if device == "cuda":
            torch.cuda.empty_cache()
        rows.append({"context": ctx, "gqa_tok_s": round(g_rate, 1), "mla_tok_s": round(m_rate, 1),
                     "speedup": round(m_rate / g_rate, 3),
                     "gqa_cache_mib": round(g_bytes * len(gqa.layers) * ctx * batch / 2**20, 4),
                     "mla_cache_mib": round(m_bytes * len(mla.layers) * ctx * batch / 2**20, 4)})
    return {"gqa_bytes_per_token_per_layer": g_bytes, "mla_bytes_per_token_per_layer": m_bytes,
            "kv_bytes_ratio": round(g_bytes / m_bytes, 3), "decode": rows,
            "params_gqa": gqa.num_parameters(), "params_mla": mla.num_parameters()}


def framelab_cli(*args: str) -> None:
    res = subprocess.run([sys.executable, "-m", "framelab.cli", *args], capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise SystemExit(f"framelab {' '.join(args)} failed:\n{res.stderr[-2000:]}")


def last_metrics(run: Path) -> dict:
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    keys = ("val/mcq_acc/describe", "val/mcq_named_acc/describe", "val/accuracy")
    out = {}
    for r in rows:
        out.update({k: round(float(r[k]), 4) for k in keys if r.get(k)})
    return out


def accuracy_table(ckpt: str, ranks, rope_dims: int, recover_steps: int, method: str,
                   calib: int, extra: list[str]) -> list[dict]:
    from framelab.convert import convert_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="bench_mla_"))
    common = ["experiment=videollm_sft", "logger=csv", *extra]
    framelab_cli("validate", *common, f"init_from={ckpt}", f"hydra.run.dir={tmp / 'gqa'}")
    rows = [{"model": "GQA", "rank": "-", "stage": "trained", **last_metrics(tmp / "gqa")}]
    for rank in ranks:
        out = tmp / f"mla_r{rank}.ckpt"
        convert_checkpoint(ckpt, str(out), rank, rope_dims, method, calib)
        mla = ["model.attention=mla", f"init_from={out}"]
        framelab_cli("validate", *common, *mla, f"hydra.run.dir={tmp / f'conv{rank}'}")
        rows.append({"model": "M²LA", "rank": rank, "stage": "converted",
                     **last_metrics(tmp / f"conv{rank}")})
        if recover_steps:
            framelab_cli("fit", *common, *mla, f"trainer.max_steps={recover_steps}",
                         f"trainer.val_check_interval={recover_steps}", "callbacks=none",
                         f"hydra.run.dir={tmp / f'rec{rank}'}")
            rows.append({"model": "M²LA", "rank": rank, "stage": f"+{recover_steps} steps",
                         **last_metrics(tmp / f"rec{rank}")})
    return rows


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["decode"]
    ctx = [r["context"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ctx, [r["gqa_tok_s"] for r in rows], "o-", label="GQA")
    a.plot(ctx, [r["mla_tok_s"] for r in rows], "o-", label="M²LA")
    a.set(xscale="log", xlabel="context (tokens)", ylabel="decode tokens/s", title="decode speed")
    b.plot(ctx, [r["gqa_cache_mib"] for r in rows], "o-", label="GQA")
    b.plot(ctx, [r["mla_cache_mib"] for r in rows], "o-", label="M²LA")
    b.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="KV cache (MiB)",
          title=f"cache size (ratio {result['kv_bytes_ratio']}x)")
    for ax in (a, b):
        ax.legend()
    fig.suptitle(result["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="framelab bench mla")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default="bench_mla.png")
    p.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=8, help="decode steps timed per measurement")
    p.add_argument("--size", default="small", choices=SIZES,
                   help="the decoders' shape: small (512 wide, 4 layers) or a Qwen3 preset's")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="weights and cache (default: bfloat16 on a GPU, float32 on a CPU)")
    p.add_argument("--ckpt", default=None, help="trained GQA videollm checkpoint: accuracy table")
    p.add_argument("--ranks", type=int, nargs="+", default=[48, 32, 16])
    p.add_argument("--rope-dims", type=int, default=2)
    p.add_argument("--method", default="svd", choices=["svd", "activation"])
    p.add_argument("--calib-batches", type=int, default=0)
    p.add_argument("--recover-steps", type=int, default=100)
    p.add_argument("overrides", nargs="*", help="config overrides for the validate/fit runs")
    args = p.parse_args(argv)
    if args.ckpt:  # checked before minutes of timing and data generation
        from framelab.checkpoints import read_weights

        spec = read_weights(args.ckpt, "--ckpt")["spec"]
        if spec["module"] not in (None, "VideoLLMModule"):
            raise UserError(f"--ckpt {args.ckpt}: a {spec['module']} checkpoint; give a video-LLM "
                            "checkpoint (experiment=videollm_sft)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    result = {"machine": machine(), "size": args.size, "dtype": str(dtype).split(".")[-1],
              **speed_table(args.contexts, args.batch, args.steps, device, args.size, dtype)}
    print(f"KV cache per token per layer: GQA {result['gqa_bytes_per_token_per_layer']} B, "
          f"M²LA {result['mla_bytes_per_token_per_layer']} B -> kv_bytes_ratio "
          f"{result['kv_bytes_ratio']} ({result['machine']})")
    print_table(result["decode"], ["context", "gqa_tok_s", "mla_tok_s", "speedup",
                                   "gqa_cache_mib", "mla_cache_mib"])
    if args.ckpt:
        result["accuracy"] = accuracy_table(args.ckpt, sorted(args.ranks, reverse=True),
                                            args.rope_dims, args.recover_steps, args.method,
                                            args.calib_batches, args.overrides)
        print_table(result["accuracy"], ["model", "rank", "stage", "val/mcq_acc/describe",
                                         "val/mcq_named_acc/describe", "val/accuracy"])
    if args.plot:
        plot(result, args.plot)
    write_json(args.json, result)
    return 0
