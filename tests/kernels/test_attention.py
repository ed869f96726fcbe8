"""Every attention backend available here equals the eager reference, forward and backward, and
the registry's choice is the one that runs."""
import importlib

import pytest
import torch

from framelab.kernels import AttentionSpec, attention, set_backends

# the module itself: `framelab.kernels.attention` as an attribute is the entry-point function
attention_module = importlib.import_module("framelab.kernels.attention")

BACKENDS = ["sdpa", "flex"]


def inputs(b=2, sq=12, sk=12, hq=4, hkv=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, sq, hq, d, generator=g, requires_grad=True)
    k = torch.randn(b, sk, hkv, d, generator=g, requires_grad=True)
    v = torch.randn(b, sk, hkv, d, generator=g, requires_grad=True)
    return q, k, v


def specs():
    block = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1)) > 0.4
    block |= torch.eye(12, dtype=torch.bool)  # every query sees at least itself
    cu = torch.tensor([0, 5, 6, 12], dtype=torch.int32)
    return {
        "causal": (AttentionSpec(causal=True), 2),
        "full": (AttentionSpec(causal=False), 2),
        "packed": (AttentionSpec(causal=True, cu_seqlens=cu), 1),
        "packed_full": (AttentionSpec(causal=False, cu_seqlens=cu), 1),
        "block": (AttentionSpec(causal=False, mask=block), 2),
        "block_causal": (AttentionSpec(causal=True, mask=block), 2),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(specs()))
def test_backend_matches_eager_forward_and_backward(backend, kind):
    spec, b = specs()[kind]
    q, k, v = inputs(b=b)
    ref = attention(q, k, v, spec, backend="eager")
    if backend == "flex" and not q.is_cuda:  # FlexAttention has no backward on CPU (torch)
        out = attention(q.detach(), k.detach(), v.detach(), spec, backend="flex")
        torch.testing.assert_close(out, ref.detach(), atol=1e-5, rtol=1e-4)
        pytest.skip("FlexAttention backward needs CUDA; forward checked")
    grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    out = attention(q, k, v, spec, backend=backend)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS + ["eager"])
def test_decode_step_is_causal_against_the_cache(backend):
    q, k, v = inputs(sq=12, sk=12)
    q, k, v = q.detach(), k.detach(), v.detach()
    full = attention(q, k, v, AttentionSpec(causal=True), backend="eager")
    last = attention(q[:, -3:], k, v, AttentionSpec(causal=True), backend=backend)
    torch.testing.assert_close(last, full[:, -3:], atol=1e-5, rtol=1e-4)


def test_eager_reference_is_softmax_attention():
    q, k, v = inputs(b=1, sq=3, sk=3, hq=1, hkv=1, d=4)
    out = attention(q, k, v, AttentionSpec(causal=True), backend="eager")
    scores = (q[0, :, 0] @ k[0, :, 0].T) / 2.0
    scores = scores.masked_fill(torch.triu(torch.ones(3, 3, dtype=torch.bool), 1), float("-inf"))
    torch.testing.assert_close(out[0, :, 0], torch.softmax(scores, -1) @ v[0, :, 0])


def test_attention_runs_the_backend_the_registry_chose(monkeypatch):
    """runtime.attn_backend (set_backends) picks the implementation; a call's `backend=` wins."""
    ran = []
    for name in ("_eager", "_sdpa"):
        monkeypatch.setattr(attention_module, name, lambda *a, name=name: ran.append(name))
    q, k, v = inputs()
    set_backends(attention="eager")
    attention(q, k, v)
    attention(q, k, v, backend="sdpa")
    set_backends(attention="auto")
    attention(q, k, v)  # auto on CPU: SDPA
    assert ran == ["_eager", "_sdpa", "_sdpa"]
