"""Which implementation the fused ops use: the plain-torch reference or the Triton kernels.

    set_kernel_backend("auto" | "torch" | "triton")

- `auto` (default): Triton when the op's tensors are on CUDA and `triton` imports, else the torch
  reference. CPU tensors always take the reference.
- `torch`: the reference everywhere (the ground truth the kernels are tested against).
- `triton`: the Triton kernels everywhere. On CPU tensors this only works under Triton's numpy
  interpreter (`TRITON_INTERPRET=1` set before `triton` is first imported), which is how the tests
  run the kernels without a GPU.

The config key `model.kernels` sets this; the choice is logged once per (op, implementation).
Each public op (`rms_norm`, `swiglu`, `apply_rotary`, `linear_cross_entropy`, `mla_decode`) asks
`use_triton(op, *tensors)` and imports its `triton_*` module only when the answer is yes, so
framelab imports and runs without triton installed.
"""
from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton")
_state = {"backend": "auto"}
_logged: set[tuple[str, str]] = set()


def set_kernel_backend(name: str) -> None:
    """Use `name` for every later call of the fused ops (`auto` restores the default choice)."""
    if name not in BACKENDS:
        raise ValueError(f"kernel backend {name!r} is not one of {', '.join(BACKENDS)} "
                         "(model.kernels)")
    if name == "triton" and not triton_available():
        raise ValueError("kernel backend 'triton' needs the triton package (pip install triton, "
                         "Linux only); use model.kernels=auto or torch here")
    _state["backend"] = name


def get_kernel_backend() -> str:
    return _state["backend"]


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreting() -> bool:
    """True when Triton kernels run through its CPU interpreter (TRITON_INTERPRET=1)."""
    if not triton_available():
        return False
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(op: str, *tensors: torch.Tensor) -> bool:
    """Whether `op` on these tensors should run its Triton kernel under the current backend."""
    backend = _state["backend"]
    if backend == "torch":
        choice = False
    elif backend == "triton":
        if any(not t.is_cuda for t in tensors) and not triton_interpreting():
            raise RuntimeError(f"kernel backend 'triton' got CPU tensors for {op}, which needs "
                               "TRITON_INTERPRET=1 set before triton is imported; use "
                               "model.kernels=auto to run CPU tensors through the torch reference")
        choice = True
    else:
        choice = all(t.is_cuda for t in tensors) and triton_available()
    key = (op, "triton" if choice else "torch")
    if key not in _logged:
        _logged.add(key)
        log.info("kernels: %s uses the %s implementation", *key)
    return choice
