"""Base module: optimiser groups, the warmup + cosine schedule and its explicit horizon."""
import pytest
import torch

from framelab.errors import UserError
from framelab.lightning_modules.base import build_model_config, lr_lambda
from framelab.lightning_modules.causal_lm import CausalLMModule

MODEL = {"preset": "tiny", "layers": 1, "attn_backend": "auto", "kernels": "auto"}


def test_schedule_warms_up_then_decays_to_the_floor():
    f = lr_lambda(warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)


def test_no_weight_decay_on_norms_biases_embeddings():
    module = CausalLMModule(MODEL, scheduler={"total_steps": 10})
    optimizer = module.configure_optimizers()["optimizer"]
    decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in module.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all("norm" not in names[id(p)] and "embed" not in names[id(p)] for p in decay["params"])
    assert any("embed_tokens" in names[id(p)] for p in no_decay["params"])
    assert any("layernorm" in names[id(p)] for p in no_decay["params"])


def test_missing_horizon_is_a_user_error():
    module = CausalLMModule(MODEL)
    with pytest.raises(UserError, match="module.scheduler.total_steps"):
        module.configure_optimizers()


def test_model_config_from_the_config_group():
    cfg = build_model_config({**MODEL, "hidden": None, "vocab_size": 100})
    assert (cfg.layers, cfg.vocab_size, cfg.hidden) == (1, 100, 64)
    with pytest.raises(UserError, match="model config"):
        build_model_config({"preset": "tiny", "heads": 3})


def test_loss_is_cross_entropy_of_shifted_labels():
    torch.manual_seed(0)
    module = CausalLMModule(MODEL)
    ids = torch.randint(0, 512, (2, 9))
    labels = ids.clone()
    labels[:, :3] = -100
    loss, n = module.compute_loss({"input_ids": ids, "labels": labels})
    logits = module.model(ids).logits[:, :-1]
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, ref)
    assert n == 2 * 6
