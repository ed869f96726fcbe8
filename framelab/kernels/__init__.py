"""Fused ops. Each op = a plain-torch reference + a fast path + a dispatch; the models call these."""
from framelab.kernels.attention import AttentionSpec, attention
from framelab.kernels.cross_entropy import linear_cross_entropy
from framelab.kernels.dispatch import get_kernel_backend, set_kernel_backend
from framelab.kernels.mla_decode import mla_decode
from framelab.kernels.rmsnorm import rms_norm
from framelab.kernels.rotary import apply_rotary
from framelab.kernels.swiglu import swiglu

__all__ = ["AttentionSpec", "attention", "apply_rotary", "get_kernel_backend",
           "linear_cross_entropy", "mla_decode", "rms_norm", "set_kernel_backend", "swiglu"]
