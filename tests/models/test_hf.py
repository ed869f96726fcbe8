"""HF import/export: a random tiny transformers Qwen3 (built in-process) round-trips exactly."""
import json

import pytest
import torch

from framelab.errors import UserError
from framelab.models import export_hf, load_hf


@pytest.mark.parametrize("tie", [True, False])
def test_load_and_export_match_transformers_logits(tmp_path, tie):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      tie_word_embeddings=tie, rope_theta=10000.0, rms_norm_eps=1e-6)
    hf = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():  # norms start at 1: perturb every parameter so a wrong mapping shows
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf")
    x = torch.randint(0, 300, (2, 13))
    with torch.no_grad():
        expected = hf(x).logits
        got = ours(x).logits
    assert got.shape == (2, 13, 300)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    export_hf(ours, tmp_path / "out")
    back = Qwen3ForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, expected, atol=1e-4, rtol=1e-4)


def test_load_hf_errors_are_clear(tmp_path):
    with pytest.raises(UserError, match="config.json does not exist"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match="model_type"):
        load_hf(tmp_path)
