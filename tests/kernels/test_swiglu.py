"""Triton SwiGLU (interpreted) against silu(gate) * up, forward and backward, fp32."""
import pytest
import torch
import torch.nn.functional as F

from framelab.kernels import swiglu
from tests.kernels._helpers import assert_close, grads, leaf


@pytest.mark.parametrize("shape", [(1,), (7, 97), (2, 33, 80), (3, 1, 1030)])
def test_swiglu_matches_reference(shape, triton_backend):
    gate, up = leaf(*shape, scale=3.0), leaf(*shape)
    dy = torch.randn(shape)
    y = swiglu(gate, up)
    (y * dy).sum().backward()
    got = grads(gate, up)
    ref = F.silu(gate) * up
    (ref * dy).sum().backward()
    assert_close(y, ref)
    assert_close(got[0], gate.grad)
    assert_close(got[1], up.grad)


def test_swiglu_broadcast_and_views(triton_backend):
    """Gate and up as halves of one fused projection, and an up that broadcasts over rows."""
    fused = leaf(5, 2 * 48)
    gate, up = fused[:, :48], fused[:, 48:]
    assert_close(swiglu(gate, up), F.silu(gate) * up)
    g, u = leaf(5, 48), leaf(1, 48)
    swiglu(g, u).sum().backward()
    got = grads(g, u)
    (F.silu(g) * u).sum().backward()
    assert_close(got[0], g.grad)
    assert_close(got[1], u.grad)
