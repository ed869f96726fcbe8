"""Fused ops and attention, each a plain-torch reference plus a fast path, and the one registry
(`framelab.kernels.backends`) that chooses between them; the models call these."""
from framelab.kernels.attention import AttentionSpec, attention
from framelab.kernels.backends import get_backends, set_backends
from framelab.kernels.cross_entropy import linear_cross_entropy
from framelab.kernels.mla_decode import mla_decode
from framelab.kernels.rmsnorm import add_rms_norm, rms_norm
from framelab.kernels.rotary import apply_rotary
from framelab.kernels.swiglu import swiglu

__all__ = ["AttentionSpec", "add_rms_norm", "apply_rotary", "attention", "get_backends",
           "linear_cross_entropy", "mla_decode", "rms_norm", "set_backends", "swiglu"]
