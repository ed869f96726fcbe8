"""Chunked linear + cross-entropy (torch chunks and Triton chunks, interpreted) against
F.cross_entropy(h @ W.T): loss and gradients for hidden and weight, ignore_index, smoothing."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from framelab.kernels import linear_cross_entropy, set_backends
from tests.kernels._helpers import assert_close, grads, leaf

V, D = 97, 48


def _reference(h, w, y, smoothing):
    logits = h.reshape(-1, D) @ w.t()
    return F.cross_entropy(logits, y.reshape(-1), ignore_index=-100, label_smoothing=smoothing)


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    if request.param == "triton":
        pytest.importorskip("triton")
        import framelab.kernels.triton_cross_entropy as tce
        monkeypatch.setattr(tce, "MAX_BLOCK_V", 32)  # several vocabulary blocks per row
    set_backends(kernels=request.param)
    return request.param


@pytest.mark.parametrize("shape,chunk", [((1,), 4), ((2, 9), 4), ((2, 9), 1), ((3, 11), 4096)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_matches_cross_entropy(shape, chunk, smoothing, backend):
    h, w = leaf(*shape, D), leaf(V, D, scale=0.3)
    y = torch.randint(0, V, shape)
    y.view(-1)[::3] = -100  # every third token ignored (a length-1 batch keeps its only one)
    if y.numel() == 1:
        y.fill_(5)
    loss = linear_cross_entropy(h, w, y, label_smoothing=smoothing, chunk_size=chunk)
    (loss * 2.5).backward()
    gh, gw = grads(h, w)
    ref = _reference(h, w, y, smoothing)
    (ref * 2.5).backward()
    assert_close(loss, ref)
    assert_close(gh, h.grad)
    assert_close(gw, w.grad)


def test_custom_ignore_index(backend):
    h, w = leaf(10, D), leaf(V, D, scale=0.3)
    y = torch.randint(0, V, (10,))
    y[[1, 4]] = 7
    loss = linear_cross_entropy(h, w, y, ignore_index=7, chunk_size=3)
    ref = F.cross_entropy(h @ w.t(), y, ignore_index=7)
    assert_close(loss, ref)


def test_all_ignored_gives_zero_loss_and_zero_grads(backend):
    h, w = leaf(2, 5, D), leaf(V, D)
    loss = linear_cross_entropy(h, w, torch.full((2, 5), -100), chunk_size=3)
    loss.backward()
    assert loss.item() == 0.0
    assert h.grad.abs().max() == 0 and w.grad.abs().max() == 0


def test_frozen_head_and_no_grad(backend):
    h, w = leaf(6, D), torch.randn(V, D) * 0.3
    y = torch.randint(0, V, (6,))
    linear_cross_entropy(h, w, y, chunk_size=4).backward()
    ref_h = h.detach().clone().requires_grad_()
    _reference(ref_h, w, y, 0.0).backward()
    assert_close(h.grad, ref_h.grad)
    with torch.no_grad():
        assert_close(linear_cross_entropy(h, w, y, chunk_size=4), _reference(h, w, y, 0.0))


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_materialises_the_full_logits(torch_backend):
    """Forward + backward with 64 tokens in chunks of 8 never makes a tensor above chunk x V
    (nor above the (V, d) weight gradient), while the plain loss makes the (64, V) logits."""
    N, chunk, vocab, d = 64, 8, 1000, 16
    h, w = leaf(N, d), leaf(vocab, d)
    y = torch.randint(0, vocab, (N,))
    with _LargestTensor() as seen:
        linear_cross_entropy(h, w, y, chunk_size=chunk).backward()
    assert seen.largest <= max(chunk * vocab, vocab * d)
    with _LargestTensor() as plain:
        F.cross_entropy(h @ w.t(), y).backward()
    assert plain.largest >= N * vocab


def test_backward_twice_is_a_clear_error(torch_backend):
    h, w = leaf(4, D), leaf(V, D)
    loss = linear_cross_entropy(h, w, torch.randint(0, V, (4,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="back-propagated twice"):
        loss.backward()


def test_autocast_bf16_matches_reference_under_autocast(backend):
    """Under bf16 autocast with fp32 master weights the matmuls run in bf16 and the gradients
    come back in fp32, as the plain loss does under the same autocast."""
    h, w = leaf(2, 9, D), leaf(V, D, scale=0.3)
    y = torch.randint(0, V, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, y, label_smoothing=0.1, chunk_size=4)
    loss.backward()
    gh, gw = grads(h, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _reference(h, w, y, 0.1)
    ref.backward()
    assert gh.dtype == gw.dtype == torch.float32
    assert_close(loss, ref.float())  # same bf16 logits: equal (fp32 matmuls differ by ~6e-4)
    # the bf16 logit gradients may round one ulp apart; chunked vs whole bf16 matmuls differ too
    assert_close(gh, h.grad, atol=5e-4, rtol=1e-2)
    assert_close(gw, w.grad, atol=2e-3, rtol=1e-2)
