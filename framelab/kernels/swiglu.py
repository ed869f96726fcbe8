"""SwiGLU activation: silu(gate) * up.

`gate` and `up` are any two broadcastable tensors (in the MLP both are (..., d_ff)). The Triton
kernel lives in `triton_swiglu`; `framelab.kernels.backends` picks it or this reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from framelab.kernels.backends import use_triton


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if use_triton("swiglu", gate, up):
        from framelab.kernels.triton_swiglu import SwiGLUFunction
        if gate.shape != up.shape:  # broadcast outside the Function so autograd reduces grads
            gate, up = torch.broadcast_tensors(gate, up)
        return SwiGLUFunction.apply(gate, up)
    return swiglu_reference(gate, up)
