"""Triton RMSNorm, alone and fused with the residual add (interpreted), against the torch
reference, forward and backward, fp32; and the RMSNorm layer's two methods."""
import pytest
import torch

from framelab.kernels import add_rms_norm, rms_norm
from framelab.models.layers import RMSNorm
from framelab.kernels.rmsnorm import rms_norm_reference
from tests.kernels._helpers import assert_close, grads, leaf

SHAPES = [(1, 1, 48), (2, 7, 80), (3, 5, 97), (33, 130)]


@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm_matches_reference(shape, triton_backend):
    x, w = leaf(*shape), leaf(shape[-1])
    dy = torch.randn(shape)
    y = rms_norm(x, w, eps=1e-5)
    (y * dy).sum().backward()
    gx, gw = grads(x, w)
    ref = rms_norm_reference(x, w, 1e-5)
    (ref * dy).sum().backward()
    assert_close(y, ref)
    assert_close(gx, x.grad)
    assert_close(gw, w.grad)


@pytest.mark.parametrize("shape", [(1, 1, 48), (2, 7, 97)])
def test_add_rms_norm_matches_reference(shape, triton_backend):
    """The fused residual variant returns (norm(x + r), x + r); both outputs carry gradients."""
    x, r, w = leaf(*shape), leaf(*shape), leaf(shape[-1])
    dy, ds = torch.randn(shape), torch.randn(shape)
    y, s = add_rms_norm(x, r, w)
    ((y * dy).sum() + (s * ds).sum()).backward()
    got = grads(x, r, w)
    ref_s = x + r
    ref_y = rms_norm_reference(ref_s, w, 1e-6)
    ((ref_y * dy).sum() + (ref_s * ds).sum()).backward()
    assert_close(y, ref_y)
    assert_close(s, ref_s)
    for g, t in zip(got, (x, r, w)):
        assert_close(g, t.grad)


def test_rms_norm_non_contiguous_input(triton_backend):
    base = torch.randn(4, 7, 80)
    x = base.transpose(0, 1)  # (7, 4, 80), not contiguous
    w = torch.randn(80)
    assert_close(rms_norm(x, w), rms_norm_reference(x, w, 1e-6))


def test_rms_norm_torch_backend_is_the_reference(torch_backend):
    x, w = torch.randn(3, 48), torch.randn(48)
    assert torch.equal(rms_norm(x, w), rms_norm_reference(x, w, 1e-6))


@pytest.mark.parametrize("backend", ["torch_backend", "triton_backend"])
def test_rmsnorm_layer_forward_is_a_tensor_and_add_and_norm_a_pair(backend, request):
    request.getfixturevalue(backend)
    norm = RMSNorm(48, eps=1e-5)
    x, r = torch.randn(2, 3, 48), torch.randn(2, 3, 48)
    y = norm(x)
    assert isinstance(y, torch.Tensor)
    assert_close(y, rms_norm_reference(x, norm.weight, 1e-5))
    normed, summed = norm.add_and_norm(x, r)
    assert_close(summed, x + r)
    assert_close(normed, norm(x + r))
