"""The backend registry: names and one-line errors per config key, the auto rules for attention
and for the fused ops, logging once, and that each op really routes through it."""
import importlib
import logging
from types import SimpleNamespace

import pytest
import torch

from framelab.kernels import (AttentionSpec, add_rms_norm, apply_rotary, get_backends,
                              linear_cross_entropy, mla_decode, rms_norm, set_backends, swiglu)
from framelab.kernels import backends

CPU = SimpleNamespace(is_cuda=False)
CUDA = SimpleNamespace(is_cuda=True)


def test_set_and_get_each_kind_alone_or_both():
    set_backends(attention="eager", kernels="torch")
    assert get_backends() == {"attention": "eager", "kernels": "torch"}
    set_backends(kernels="auto")
    assert get_backends() == {"attention": "eager", "kernels": "auto"}
    set_backends(attention="sdpa")
    assert get_backends() == {"attention": "sdpa", "kernels": "auto"}


@pytest.mark.parametrize("kwargs,message", [
    ({"attention": "magic"},
     "runtime.attn_backend='magic' is not one of auto, flash, sdpa, flex, eager"),
    ({"kernels": "cuda"}, "runtime.kernels='cuda' is not one of auto, torch, triton"),
])
def test_unknown_name_is_one_line_naming_the_config_key(kwargs, message):
    with pytest.raises(ValueError) as info:
        set_backends(**kwargs)
    assert str(info.value) == message


def test_a_bad_value_changes_neither_kind():
    before = get_backends()
    with pytest.raises(ValueError, match="runtime.kernels"):
        set_backends(attention="eager", kernels="cuda")
    assert get_backends() == before


def test_each_backend_that_needs_a_package_says_which(monkeypatch):
    monkeypatch.setattr(backends, "flash_available", lambda: False)
    monkeypatch.setattr(backends, "triton_available", lambda: False)
    with pytest.raises(ValueError, match="runtime.attn_backend=flash needs the flash-attn"):
        set_backends(attention="flash")
    with pytest.raises(ValueError, match="runtime.kernels=triton needs the triton package"):
        set_backends(kernels="triton")


# ---- attention ---------------------------------------------------------------------------------

def _q(is_cuda=True, dtype=torch.bfloat16):
    return SimpleNamespace(is_cuda=is_cuda, dtype=dtype)


def test_auto_attention_takes_flash_only_for_cuda_half_precision_without_a_block_mask(monkeypatch):
    monkeypatch.setattr(backends, "flash_available", lambda: True)
    causal, block = AttentionSpec(causal=True), AttentionSpec(mask=torch.ones(1, 1, 2, 2).bool())
    assert backends.pick_attention(_q(), causal) == "flash"
    assert backends.pick_attention(_q(), AttentionSpec(cu_seqlens=torch.tensor([0, 2]))) == "flash"
    assert backends.pick_attention(_q(), block) == "sdpa"
    assert backends.pick_attention(_q(dtype=torch.float32), causal) == "sdpa"
    assert backends.pick_attention(_q(is_cuda=False), causal) == "sdpa"
    monkeypatch.setattr(backends, "flash_available", lambda: False)
    assert backends.pick_attention(_q(), causal) == "sdpa"


def test_chosen_attention_backend_applies_and_a_call_may_override_it():
    set_backends(attention="eager")
    assert backends.pick_attention(_q(), AttentionSpec()) == "eager"
    assert backends.pick_attention(_q(), AttentionSpec(), forced="flex") == "flex"
    with pytest.raises(ValueError, match=r"attention\(backend='magic'\) is not one of"):
        backends.pick_attention(_q(), AttentionSpec(), forced="magic")


# ---- kernels -----------------------------------------------------------------------------------

def test_auto_takes_triton_only_for_cuda_tensors():
    pytest.importorskip("triton")
    set_backends(kernels="auto")
    assert backends.use_triton("op", CUDA, CUDA)
    assert not backends.use_triton("op", CPU, CPU)
    assert not backends.use_triton("op", CUDA, CPU)
    set_backends(kernels="torch")
    assert not backends.use_triton("op", CUDA)


def test_auto_without_triton_uses_torch(monkeypatch):
    monkeypatch.setattr(backends, "triton_available", lambda: False)
    set_backends(kernels="auto")
    assert not backends.use_triton("op", CUDA)


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    set_backends(kernels="triton")
    assert backends.use_triton("op", CPU)  # the tests run under TRITON_INTERPRET=1
    monkeypatch.setattr(backends, "triton_interpreting", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        backends.use_triton("op", CPU)


def test_each_choice_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(backends, "_logged", set())
    set_backends(kernels="torch")
    with caplog.at_level(logging.INFO, logger=backends.__name__):
        for _ in range(3):
            backends.use_triton("op", CPU)
            backends.pick_attention(_q(is_cuda=False), AttentionSpec())
    assert [r.getMessage() for r in caplog.records] == ["kernels: op -> torch",
                                                        "attention: causal masks -> sdpa"]


def _calls():
    x = torch.randn(2, 3, 2, 8)
    ang = torch.randn(2, 3, 4)
    return {
        "rms_norm": ("triton_rmsnorm.RMSNormFunction", lambda: rms_norm(x, torch.ones(8))),
        "add_rms_norm": ("triton_rmsnorm.RMSNormFunction",
                         lambda: add_rms_norm(x, x, torch.ones(8))),
        "swiglu": ("triton_swiglu.SwiGLUFunction", lambda: swiglu(x, x)),
        "apply_rotary": ("triton_rotary.RotaryFunction",
                         lambda: apply_rotary(x, ang.cos(), ang.sin())),
        "linear_cross_entropy": ("triton_cross_entropy.chunk_loss_triton",
                                 lambda: linear_cross_entropy(x.reshape(-1, 8), torch.randn(5, 8),
                                                              torch.zeros(12, dtype=torch.long))),
        "mla_decode": ("triton_mla_decode.mla_decode_triton",
                       lambda: mla_decode(x[:, 0], x[:, 0, :, :4], x[:, :, 0], x[:, :, 0, :4],
                                          torch.tensor([3, 1]), 0.5)),
    }


@pytest.mark.parametrize("op", list(_calls()))
def test_each_op_routes_through_the_registry(op, monkeypatch):
    """Under `triton` the op reaches its Triton entry point; under `torch` and `auto` (CPU) not."""
    pytest.importorskip("triton")
    target, call = _calls()[op]
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
    for name in ("torch", "auto"):
        set_backends(kernels=name)
        call()
    assert hits == []
    set_backends(kernels="triton")
    with pytest.raises(Hit):
        call()
    assert hits == [1]
