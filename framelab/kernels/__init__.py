"""Fused ops. Each op = a plain-torch reference + a fast path + a dispatch; the models call these."""
from framelab.kernels.attention import AttentionSpec, attention
from framelab.kernels.cross_entropy import linear_cross_entropy
from framelab.kernels.rmsnorm import rms_norm
from framelab.kernels.rotary import apply_rotary
from framelab.kernels.swiglu import swiglu

__all__ = ["AttentionSpec", "attention", "apply_rotary", "linear_cross_entropy", "rms_norm", "swiglu"]
