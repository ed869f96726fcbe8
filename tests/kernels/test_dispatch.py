"""The backend switch: names, the auto rule, and that each op really routes through it."""
from types import SimpleNamespace

import pytest
import torch

from framelab.kernels import (apply_rotary, get_kernel_backend, linear_cross_entropy, mla_decode,
                              rms_norm, set_kernel_backend, swiglu)
from framelab.kernels import dispatch

CPU = SimpleNamespace(is_cuda=False)
CUDA = SimpleNamespace(is_cuda=True)


def test_set_and_get():
    for name in ("torch", "auto"):
        set_kernel_backend(name)
        assert get_kernel_backend() == name


def test_unknown_backend_is_one_clear_error():
    with pytest.raises(ValueError, match="not one of auto, torch, triton"):
        set_kernel_backend("cuda")


def test_auto_takes_triton_only_for_cuda_tensors():
    pytest.importorskip("triton")
    set_kernel_backend("auto")
    assert dispatch.use_triton("op", CUDA, CUDA)
    assert not dispatch.use_triton("op", CPU, CPU)
    assert not dispatch.use_triton("op", CUDA, CPU)
    set_kernel_backend("torch")
    assert not dispatch.use_triton("op", CUDA)


def test_auto_without_triton_uses_torch(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    set_kernel_backend("auto")
    assert not dispatch.use_triton("op", CUDA)
    with pytest.raises(ValueError, match="needs the triton package"):
        set_kernel_backend("triton")


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    set_kernel_backend("triton")
    assert dispatch.use_triton("op", CPU)  # the tests run under TRITON_INTERPRET=1
    monkeypatch.setattr(dispatch, "triton_interpreting", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dispatch.use_triton("op", CPU)


def _calls():
    x = torch.randn(2, 3, 2, 8)
    ang = torch.randn(2, 3, 4)
    return {
        "triton_rmsnorm.RMSNormFunction": lambda: rms_norm(x, torch.ones(8)),
        "triton_swiglu.SwiGLUFunction": lambda: swiglu(x, x),
        "triton_rotary.RotaryFunction": lambda: apply_rotary(x, ang.cos(), ang.sin()),
        "triton_cross_entropy.chunk_loss_triton": lambda: linear_cross_entropy(
            x.reshape(-1, 8), torch.randn(5, 8), torch.zeros(12, dtype=torch.long)),
        "triton_mla_decode.mla_decode_triton": lambda: mla_decode(
            x[:, 0], x[:, 0, :, :4], x[:, :, 0], x[:, :, 0, :4], torch.tensor([3, 1]), 0.5),
    }


@pytest.mark.parametrize("target", list(_calls()))
def test_each_op_routes_through_the_dispatch(target, monkeypatch):
    """Under `triton` the op reaches its Triton entry point; under `torch` and `auto` (CPU) not."""
    pytest.importorskip("triton")
    import importlib

    module_name, attr = target.split(".")
    module = importlib.import_module(f"framelab.kernels.{module_name}")
    hits = []

    class Hit(Exception):
        pass

    def fake(*args, **kwargs):
        hits.append(1)
        raise Hit

    if hasattr(getattr(module, attr), "apply"):
        monkeypatch.setattr(getattr(module, attr), "apply", fake)
    else:
        monkeypatch.setattr(module, attr, fake)
    call = _calls()[target]
    for name in ("torch", "auto"):
        set_kernel_backend(name)
        call()
    assert hits == []
    set_kernel_backend("triton")
    with pytest.raises(Hit):
        call()
    assert hits == [1]
