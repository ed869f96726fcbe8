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

def _cuda_cases():
    """(op name, inputs factory, reference fn, public fn, needs backward)."""
    from framelab.kernels import apply_rotary, linear_cross_entropy, mla_decode, rms_norm, swiglu
    from framelab.kernels.cross_entropy import linear_cross_entropy_reference
    from framelab.kernels.mla_decode import mla_decode_reference
    from framelab.kernels.rmsnorm import rms_norm_reference
    from framelab.kernels.rotary import apply_rotary_reference
    from framelab.kernels.swiglu import swiglu_reference

    dev, bf16 = "cuda", torch.bfloat16

    def t(*shape, grad=True, scale=1.0):
        return (torch.randn(*shape, device=dev, dtype=bf16) * scale).requires_grad_(grad)

    def angles(b, s, half):
        ang = torch.randn(b, s, half, device=dev)
        return ang.cos(), ang.sin()

    def ce_inputs():
        labels = torch.randint(0, 151936, (8192,), device=dev)
        return t(8192, 4096), t(151936, 4096, scale=0.02), labels

    def mla_inputs():
        return (t(16, 128, 512, grad=False), t(16, 128, 64, grad=False),
                t(16, 8192, 512, grad=False), t(16, 8192, 64, grad=False),
                torch.randint(4096, 8193, (16,), device=dev), 0.07)

    return [
        ("rms_norm (16384x4096)", lambda: (t(16384, 4096), t(4096)),
         lambda x, w: rms_norm_reference(x, w, 1e-6), lambda x, w: rms_norm(x, w), True),
        ("rms_norm+residual (16384x4096)", lambda: (t(16384, 4096), t(4096), t(16384, 4096)),
         lambda x, w, r: rms_norm_reference(x + r, w, 1e-6),
         lambda x, w, r: rms_norm(x, w, residual=r)[0], True),
        ("swiglu (16384x11008)", lambda: (t(16384, 11008), t(16384, 11008)),
         swiglu_reference, swiglu, True),
        ("rotary (8x2048x32x128)", lambda: (t(8, 2048, 32, 128), *angles(8, 2048, 64)),
         apply_rotary_reference, apply_rotary, True),
        ("linear_ce (8192 tok, V 151936, d 4096)", ce_inputs,
         linear_cross_entropy_reference, linear_cross_entropy, True),
        ("mla_decode (B16 H128 T8192 dc512 dr64)", mla_inputs,
         mla_decode_reference, mla_decode, False),
    ]


def _run_variant(fn, make_inputs, backward: bool) -> dict:
    inputs = make_inputs()
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]

    def fwd():
        with torch.no_grad():
            fn(*inputs)

    def fwd_bwd():
        out = fn(*inputs)
        out = out if out.dim() == 0 else out.float().square().mean()
        out.backward()
        for x in leaves:
            x.grad = None

    row = {"fwd_ms": timeit(fwd, warmup=2, repeat=10) * 1e3}
    step = fwd_bwd if backward else fwd
    if backward:
        row["fwd_bwd_ms"] = timeit(fwd_bwd, warmup=2, repeat=10) * 1e3
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    row["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return row


def bench_cuda() -> dict:
    from framelab.kernels import get_kernel_backend, set_kernel_backend
    from framelab.kernels.dispatch import triton_available

    if not triton_available():
        raise RuntimeError("triton is not installed; pip install triton")
    rows = []
    before = get_kernel_backend()
    try:
        for name, make_inputs, reference, public, backward in _cuda_cases():
            variants = [("reference", reference, "torch"),
                        ("torch.compile(reference)", torch.compile(reference), "torch"),
                        ("triton", public, "triton")]
            base = None
            for label, fn, backend in variants:
                set_kernel_backend(backend)
                try:
                    row = _run_variant(fn, make_inputs, backward)
                except Exception as exc:  # one failing variant must not hide the others
                    row = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"}
                key = "fwd_bwd_ms" if backward else "fwd_ms"
                if label == "reference":
                    base = row.get(key)
                if base and row.get(key):
                    row["speedup"] = base / row[key]
                rows.append({"op": name, "variant": label, **row})
                gc.collect()
                torch.cuda.empty_cache()
    finally:
        set_kernel_backend(before)
    shown = [{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    print_table(shown, ["op", "variant", "fwd_ms", "fwd_bwd_ms", "peak_mb", "speedup", "error"])
    return {"dtype": "bfloat16", "rows": rows}


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
