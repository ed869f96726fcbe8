"""The one registry of backend choices: for attention and for the fused ops, the valid names, the
current choice, what each needs installed, and which implementation a given call takes.

    set_backends(attention="auto", kernels="auto")  # once per run, from runtime.attn_backend
                                                    # and runtime.kernels
    get_backends()                                  # {"attention": "auto", "kernels": "auto"}

Attention (`framelab.kernels.attention`): `auto | flash | sdpa | flex | eager`.
- `auto` (default): flash-attn when it imports, the tensors are on CUDA in fp16/bf16 and the spec
  needs no arbitrary mask; else SDPA. `flash` needs flash-attn and a CUDA device.

Kernels (`rms_norm`, `add_rms_norm`, `swiglu`, `apply_rotary`, `linear_cross_entropy`,
`mla_decode`): `auto | torch | triton`.
- `auto` (default): Triton when all of the op's tensors are on CUDA and `triton` imports, else the
  plain-torch reference (the ground truth the kernels are tested against), which `torch` forces.
- `triton`: the Triton kernels everywhere. On CPU tensors this only works under Triton's numpy
  interpreter (`TRITON_INTERPRET=1` set before `triton` is first imported), which is how the tests
  run the kernels without a GPU.

The attention entry point asks `pick_attention(q, spec)`; each fused op asks
`use_triton(op, *tensors)` and imports its `triton_*` module only when the answer is yes, so
framelab imports and runs without triton or flash-attn installed. Each answer is logged once per
(kind, what, implementation).
"""
from __future__ import annotations

import functools
import importlib
import logging
import os

import torch

log = logging.getLogger(__name__)

# kind -> (the config key that sets it, its valid names; the first is the default)
KINDS = {
    "attention": ("runtime.attn_backend", ("auto", "flash", "sdpa", "flex", "eager")),
    "kernels": ("runtime.kernels", ("auto", "torch", "triton")),
}
_choice = {kind: names[0] for kind, (_, names) in KINDS.items()}
_logged: set[tuple[str, str, str]] = set()


def set_backends(attention: str | None = None, kernels: str | None = None) -> None:
    """Use these backends for every later call (None keeps a kind's current choice). Both are
    checked before either changes, so a bad value leaves the registry as it was."""
    wanted = {kind: name for kind, name in (("attention", attention), ("kernels", kernels))
              if name is not None}
    for kind, name in wanted.items():
        _check(kind, name)
    _choice.update(wanted)


def get_backends() -> dict[str, str]:
    """The current choice of each kind; `set_backends(**get_backends())` restores it."""
    return dict(_choice)


def _check(kind: str, name: str) -> None:
    key, names = KINDS[kind]
    if name not in names:
        raise ValueError(f"{key}={name!r} is not one of {', '.join(names)}")
    if name == "flash" and not flash_available():
        raise ValueError(f"{key}=flash needs the flash-attn package and a CUDA device "
                         "(pip install -e '.[cuda]'); use auto or sdpa here")
    if name == "triton" and not triton_available():
        raise ValueError(f"{key}=triton needs the triton package (pip install triton, Linux only); "
                         "use auto or torch here")


# ---- what is installed ---------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def flash_available() -> bool:
    return torch.cuda.is_available() and _importable("flash_attn")


def triton_available() -> bool:
    return _importable("triton.language")


def triton_interpreting() -> bool:
    """True when Triton kernels run through its CPU interpreter (TRITON_INTERPRET=1)."""
    if not triton_available():
        return False
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---- which implementation a call takes -----------------------------------------------------

def pick_attention(q: torch.Tensor, spec, forced: str | None = None) -> str:
    """The attention implementation for query `q` under `spec` (an `AttentionSpec`): `forced` (the
    call's own `backend=`) when given, else the chosen backend, with `auto` resolved."""
    names = KINDS["attention"][1]
    if forced is not None and forced not in names:
        raise ValueError(f"attention(backend={forced!r}) is not one of {', '.join(names)}")
    name = forced or _choice["attention"]
    if name == "auto":
        fast = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and spec.mask is None
        name = "flash" if fast and flash_available() else "sdpa"
    _log_once("attention", f"{spec.kind} masks", name)
    return name


def use_triton(op: str, *tensors: torch.Tensor) -> bool:
    """Whether `op` on these tensors should run its Triton kernel under the chosen backend."""
    backend = _choice["kernels"]
    if backend == "torch":
        choice = False
    elif backend == "triton":
        if any(not t.is_cuda for t in tensors) and not triton_interpreting():
            raise RuntimeError(f"runtime.kernels=triton got CPU tensors for {op}, which needs "
                               "TRITON_INTERPRET=1 set before triton is imported; use "
                               "runtime.kernels=auto to run CPU tensors through the reference")
        choice = True
    else:
        choice = all(t.is_cuda for t in tensors) and triton_available()
    _log_once("kernels", op, "triton" if choice else "torch")
    return choice


def _log_once(kind: str, what: str, name: str) -> None:
    if (kind, what, name) not in _logged:
        _logged.add((kind, what, name))
        log.info("%s: %s -> %s", kind, what, name)
