"""`framelab bench kernels [--json PATH]`: the fused kernels against their references.

CPU (always): peak memory and time of one forward + backward of the chunked linear-cross-entropy
against the plain `F.cross_entropy(hidden @ lm_head.T)`, by default 8192 tokens, vocabulary
150,000, d_model 1024, fp32. torch's CPU allocator is invisible to tracemalloc, so each variant
runs in a fresh Python process that reports its peak resident memory (VmHWM, reset just before the
measured step) minus its resident memory before the step. JSON key `ce_memory_ratio` = chunked
(default chunk 4096) peak / plain peak.

CUDA (when a GPU is present, else skipped with a message): each kernel (Triton) against its torch
reference and `torch.compile` of the reference, bf16, forward and forward + backward where
training needs a backward, with the peak CUDA memory of each.
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

import torch

from framelab.benchmarks._common import machine, print_table, timeit, write_json

DEFAULT_CHUNK = 4096


# ---- CPU: linear-cross-entropy memory, one variant per fresh process -----------------------

def _proc_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _child(spec_json: str) -> None:
    """Runs in a fresh process: one forward + backward of one variant; prints one JSON line."""
    spec = json.loads(spec_json)
    from framelab.kernels.cross_entropy import linear_cross_entropy

    torch.manual_seed(0)
    n, vocab, d = spec["tokens"], spec["vocab"], spec["d_model"]
    hidden = torch.randn(n, d).requires_grad_()
    weight = (torch.randn(vocab, d) * d ** -0.5).requires_grad_()
    labels = torch.randint(0, vocab, (n,))
    labels[::10] = -100
    gc.collect()
    try:  # reset the high-water mark so VmHWM covers only the measured step
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    base_kb = _proc_kb("VmRSS")
    t0 = time.perf_counter()
    if spec["chunk"]:
        loss = linear_cross_entropy(hidden, weight, labels, chunk_size=spec["chunk"])
    else:
        loss = torch.nn.functional.cross_entropy(hidden @ weight.t(), labels)
    loss.backward()
    seconds = time.perf_counter() - t0
    peak_kb = _proc_kb("VmHWM") - base_kb
    print(json.dumps({"peak_mb": peak_kb / 1024, "seconds": seconds, "loss": loss.item()}))


def _measure(tokens: int, vocab: int, d_model: int, chunk: int | None) -> dict:
    spec = json.dumps({"tokens": tokens, "vocab": vocab, "d_model": d_model, "chunk": chunk})
    code = "import sys; from framelab.benchmarks.kernels import _child; _child(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        how = "killed (out of memory?)" if proc.returncode < 0 else f"exit {proc.returncode}"
        raise RuntimeError(f"linear-CE measurement (chunk={chunk}) failed, {how}: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mem_available_mb() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def bench_ce_memory(tokens: int, vocab: int, d_model: int, chunks: list[int]) -> dict:
    logits_mb = tokens * vocab * 4 / 2**20
    need_mb = 3.2 * logits_mb  # logits, log-softmax and their gradients overlap in the plain loss
    if _mem_available_mb() < need_mb:
        raise RuntimeError(f"the plain loss needs about {need_mb / 1024:.1f} GiB free for "
                           f"{tokens} tokens x vocab {vocab}; only "
                           f"{_mem_available_mb() / 1024:.1f} GiB are available; lower --tokens "
                           "or --vocab")
    print(f"linear-cross-entropy, fp32, {tokens} tokens, vocab {vocab}, d_model {d_model} "
          f"(full logits {logits_mb / 1024:.2f} GiB); one forward + backward per fresh process")
    rows = []
    plain = _measure(tokens, vocab, d_model, None)
    rows.append({"variant": "plain F.cross_entropy(h @ W.T)", "chunk": "-", **plain})
    for chunk in chunks:
        rows.append({"variant": "chunked linear_cross_entropy", "chunk": chunk,
                     **_measure(tokens, vocab, d_model, chunk)})
    for row in rows:
        row["memory_vs_plain"] = row["peak_mb"] / plain["peak_mb"]
        row["time_vs_plain"] = row["seconds"] / plain["seconds"]
    shown = [{**r, "peak_mb": f"{r['peak_mb']:.0f}", "seconds": f"{r['seconds']:.2f}",
              "loss": f"{r['loss']:.5f}", "memory_vs_plain": f"{r['memory_vs_plain']:.3f}",
              "time_vs_plain": f"{r['time_vs_plain']:.2f}"} for r in rows]
    print_table(shown, ["variant", "chunk", "peak_mb", "seconds", "memory_vs_plain",
                        "time_vs_plain", "loss"])
    by_chunk = {str(r["chunk"]): r["memory_vs_plain"] for r in rows[1:]}
    ratio_row = next((r for r in rows[1:] if r["chunk"] == DEFAULT_CHUNK), rows[1])
    print(f"ce_memory_ratio (chunk {ratio_row['chunk']} peak / plain peak) = "
          f"{ratio_row['memory_vs_plain']:.3f}")
    return {"tokens": tokens, "vocab": vocab, "d_model": d_model, "dtype": "float32",
            "rows": rows, "ce_memory_ratio": ratio_row["memory_vs_plain"],
            "ce_memory_ratio_chunk": ratio_row["chunk"], "ce_memory_ratio_by_chunk": by_chunk}


# ---- CUDA: each kernel vs its reference vs torch.compile of the reference ------------------

# Shapes: Qwen3-8B-like widths for the real measurement; TINY lets a CPU test drive the same
# harness through Triton's interpreter.
FULL = {"tokens": 16384, "d": 4096, "ff": 11008, "rotary": (8, 2048, 32, 128),
        "ce": (8192, 4096, 151936), "mla": (16, 128, 8192, 512, 64)}
TINY = {"tokens": 33, "d": 80, "ff": 97, "rotary": (2, 7, 3, 48), "ce": (21, 48, 97),
        "mla": (2, 5, 40, 48, 16)}


def _cases(device: str, dtype: torch.dtype, size: dict):
    """(op name, inputs factory, reference fn, public fn, needs backward)."""
    from framelab.kernels import (add_rms_norm, apply_rotary, linear_cross_entropy, mla_decode,
                                  rms_norm, swiglu)
    from framelab.kernels.cross_entropy import linear_cross_entropy_reference
    from framelab.kernels.mla_decode import mla_decode_reference
    from framelab.kernels.rmsnorm import rms_norm_reference
    from framelab.kernels.rotary import apply_rotary_reference
    from framelab.kernels.swiglu import swiglu_reference

    def t(*shape, grad=True, scale=1.0):
        return (torch.randn(*shape, device=device, dtype=dtype) * scale).requires_grad_(grad)

    n, d, ff = size["tokens"], size["d"], size["ff"]
    rb, rs, rh, rd = size["rotary"]
    cn, cd, cv = size["ce"]
    mb, mh, mt, mc, mr = size["mla"]

    def rotary_inputs():
        ang = torch.randn(rb, rs, rd // 2, device=device)
        return t(rb, rs, rh, rd), ang.cos(), ang.sin()

    def ce_inputs():
        return t(cn, cd), t(cv, cd, scale=cd ** -0.5), torch.randint(0, cv, (cn,), device=device)

    def mla_inputs():
        return (t(mb, mh, mc, grad=False), t(mb, mh, mr, grad=False), t(mb, mt, mc, grad=False),
                t(mb, mt, mr, grad=False),
                torch.randint(mt // 2, mt + 1, (mb,), device=device), (mc + mr) ** -0.5)

    return [
        (f"rms_norm ({n}x{d})", lambda: (t(n, d), t(d)),
         lambda x, w: rms_norm_reference(x, w, 1e-6), lambda x, w: rms_norm(x, w), True),
        (f"rms_norm+residual ({n}x{d})", lambda: (t(n, d), t(d), t(n, d)),
         lambda x, w, r: rms_norm_reference(x + r, w, 1e-6),
         lambda x, w, r: add_rms_norm(x, r, w)[0], True),
        (f"swiglu ({n}x{ff})", lambda: (t(n, ff), t(n, ff)), swiglu_reference, swiglu, True),
        (f"rotary ({rb}x{rs}x{rh}x{rd})", rotary_inputs, apply_rotary_reference, apply_rotary,
         True),
        (f"linear_ce ({cn} tok, d {cd}, V {cv})", ce_inputs, linear_cross_entropy_reference,
         linear_cross_entropy, True),
        (f"mla_decode (B{mb} H{mh} T{mt} dc{mc} dr{mr})", mla_inputs, mla_decode_reference,
         mla_decode, False),
    ]


def _run_variant(fn, inputs, backward: bool, repeat: int) -> tuple[dict, torch.Tensor]:
    """Times of fn on inputs (forward; forward + backward), its CUDA peak memory, its output."""
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]

    def fwd():
        with torch.no_grad():
            return fn(*inputs)

    def fwd_bwd():
        out = fn(*inputs)
        out = out if out.dim() == 0 else out.float().square().mean()
        out.backward()
        for x in leaves:
            x.grad = None

    row = {"fwd_ms": timeit(fwd, warmup=2, repeat=repeat) * 1e3}
    if backward:
        row["fwd_bwd_ms"] = timeit(fwd_bwd, warmup=2, repeat=repeat) * 1e3
    if inputs[0].is_cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        (fwd_bwd if backward else fwd)()
        torch.cuda.synchronize()
        row["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return row, fwd()


def bench_cuda(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, size: dict = FULL,
               compile_reference: bool = True, repeat: int = 10) -> dict:
    """Each op: reference, torch.compile(reference), Triton; times, peak memory, and the Triton /
    compiled output's largest deviation from the reference output on the same inputs."""
    from framelab.kernels import get_backends, set_backends
    from framelab.kernels.backends import triton_available

    if not triton_available():
        raise RuntimeError("triton is not installed; pip install triton")
    rows = []
    before = get_backends()
    try:
        for name, make_inputs, reference, public, backward in _cases(device, dtype, size):
            variants = [("reference", reference, "torch")]
            if compile_reference:
                variants.append(("torch.compile(reference)", torch.compile(reference), "torch"))
            variants.append(("triton", public, "triton"))
            base = expected = None
            for label, fn, backend in variants:
                set_backends(kernels=backend)
                torch.manual_seed(0)  # every variant gets the same inputs
                try:
                    row, out = _run_variant(fn, make_inputs(), backward, repeat)
                    if expected is None:
                        expected = out
                    else:
                        row["max_err"] = (out.float() - expected.float()).abs().max().item()
                    del out
                except Exception as exc:  # one failing variant must not hide the others
                    first = (str(exc).splitlines() or [""])[0][:80]
                    row = {"error": f"{type(exc).__name__}: {first}"}
                key = "fwd_bwd_ms" if backward else "fwd_ms"
                if label == "reference":
                    base = row.get(key)
                if base and row.get(key):
                    row["speedup"] = base / row[key]
                rows.append({"op": name, "variant": label, **row})
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
    finally:
        set_backends(**before)
    shown = [{k: (f"{v:.3g}" if k == "max_err" else f"{v:.3f}" if isinstance(v, float) else v)
              for k, v in r.items()} for r in rows]
    print_table(shown, ["op", "variant", "fwd_ms", "fwd_bwd_ms", "peak_mb", "speedup", "max_err",
                        "error"])
    return {"dtype": str(dtype).replace("torch.", ""), "rows": rows}


# ---- entry point -----------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="framelab bench kernels", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--tokens", type=int, default=8192, help="tokens for the CE memory test")
    parser.add_argument("--vocab", type=int, default=150_000, help="vocabulary for the CE test")
    parser.add_argument("--d-model", type=int, default=1024, help="hidden width for the CE test")
    parser.add_argument("--chunks", default=f"{DEFAULT_CHUNK},1024",
                        help="comma-separated chunk sizes for the chunked CE (first default)")
    parser.add_argument("--skip-cpu", action="store_true", help="skip the CPU CE memory test")
    args = parser.parse_args(argv)
    chunks = [int(c) for c in args.chunks.split(",") if c.strip()]
    payload: dict = {"machine": machine(), "torch": torch.__version__}
    print(f"machine: {payload['machine']}")
    if not args.skip_cpu:
        try:
            ce = bench_ce_memory(args.tokens, args.vocab, args.d_model, chunks)
        except RuntimeError as exc:
            print(f"framelab bench kernels: error: {exc}", file=sys.stderr)
            return 1
        payload["ce"] = ce
        payload["ce_memory_ratio"] = ce["ce_memory_ratio"]
    if torch.cuda.is_available():
        print(f"\nCUDA kernels on {torch.cuda.get_device_name(0)} (bf16): Triton vs reference "
              "vs torch.compile(reference)")
        payload["cuda"] = bench_cuda()
    else:
        msg = ("CUDA kernel comparisons skipped: no CUDA device here (torch.cuda.is_available() "
               "is False); run `framelab bench kernels` on a GPU machine for Triton vs reference "
               "vs torch.compile timings")
        print("\n" + msg)
        payload["cuda"] = {"skipped": msg}
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
