"""Compile every Triton kernel to a Hopper (sm_90) cubin without a GPU, in its launch
configurations, fp32 and bf16. Run as a script in a process where TRITON_INTERPRET is unset (the
interpreter would replace the kernels); prints one line per kernel, exits 1 if any fails."""
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from framelab.kernels import triton_cross_entropy, triton_mla_decode, triton_rmsnorm  # noqa: E402
from framelab.kernels import triton_rotary, triton_swiglu  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
INTS = ("D", "N", "ROWS_PER_PROG", "n", "S", "H", "HALF", "stride_row", "V", "ignore_index",
        "DC", "DR", "SPLIT_LEN", "N_SPLITS", "sxb", "sxs", "sxh", "sxd", "scb", "scs", "scd",
        "ssb", "sss", "ssd", "sc_b", "sc_t", "sc_c", "sr_b", "sr_t", "sr_r")
FLOATS = ("eps", "smoothing", "scale")
FP32_PTRS = ("rstd_ptr", "dw_part_ptr", "loss_ptr", "scale_ptr", "o_ptr", "lse_ptr", "cos_ptr",
             "sin_ptr")


def signature(fn, dt: str, constants: dict) -> dict:
    """Argument types by name: data pointers in `dt`, statistics fp32, sizes and strides i32."""
    types = {n: "i32" for n in INTS}
    types.update({n: "fp32" for n in FLOATS})
    types.update({n: "*fp32" for n in FP32_PTRS})
    types.update({"labels_ptr": "*i64", "len_ptr": "*i32"})
    return {n: "constexpr" if n in constants else types.get(n, f"*{dt}") for n in fn.arg_names}


def cases(dt: str):
    """(kernel, constexprs, num_warps) as the wrappers launch them for the large shapes."""
    yield triton_rmsnorm._rms_fwd_kernel, {"HAS_RESIDUAL": True, "BLOCK_D": 4096}, 8
    yield triton_rmsnorm._rms_bwd_kernel, {"HAS_DS": True, "BLOCK_D": 4096}, 8
    yield triton_swiglu._swiglu_fwd_kernel, {"BLOCK": 1024}, 4
    yield triton_swiglu._swiglu_bwd_kernel, {"BLOCK": 1024}, 4
    yield triton_rotary._rotary_kernel, {"SIGN": -1, "BLOCK_H": 32, "BLOCK_HALF": 64}, 4
    for smoothing in (False, True):
        yield (triton_cross_entropy._ce_chunk_kernel,
               {"COMPUTE_GRAD": True, "HAS_SMOOTHING": smoothing, "BLOCK_V": 8192}, 16)
    yield (triton_mla_decode._mla_decode_kernel,
           {"BLOCK_H": 16, "BLOCK_T": 32, "BLOCK_C": 512, "BLOCK_R": 64,
            "PRECISION": "ieee" if dt == "fp32" else "tf32"}, 8)


def main() -> int:
    failed = 0
    for dt in ("fp32", "bf16"):
        for fn, constants, warps in cases(dt):
            name = f"{fn.__name__} {dt} {constants}"
            try:
                src = ASTSource(fn, signature(fn, dt, constants), constants)
                triton.compile(src, target=TARGET, options={"num_warps": warps})
                print(f"ok   {name}")
            except Exception as exc:  # report every kernel, then fail
                failed += 1
                print(f"FAIL {name}: {type(exc).__name__}: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
