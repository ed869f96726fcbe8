"""Size presets: parameter counts equal transformers' Qwen3 of the same shape (built on meta)."""
import pytest
import torch

from framelab.models import PRESETS, DecoderLM, preset
from framelab.models.hf import config_to_hf

# Published non-embedding parameter counts of the Qwen3 dense models (model cards), in billions.
PUBLISHED_NON_EMBEDDING = {"qwen3-0.6b": 0.44, "qwen3-1.7b": 1.4, "qwen3-8b": 6.95}


@pytest.mark.parametrize("name", list(PUBLISHED_NON_EMBEDDING))
def test_qwen3_presets_match_transformers_and_published_counts(name):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = preset(name)
    with torch.device("meta"):
        ours = DecoderLM(cfg)
        theirs = Qwen3ForCausalLM(Qwen3Config(**config_to_hf(cfg)))
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
    non_embedding = ours.num_parameters(exclude_embeddings=True) / 1e9
    assert non_embedding == pytest.approx(PUBLISHED_NON_EMBEDDING[name], rel=0.02)


def test_presets_are_valid_and_overrides_apply():
    for name in PRESETS:
        assert sum(preset(name).mrope_section) == preset(name).head_dim // 2
    cfg = preset("tiny", layers=3, vocab_size=100)
    assert (cfg.layers, cfg.vocab_size) == (3, 100)
    assert PRESETS["tiny"].layers == 2  # presets themselves are not modified
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("nope")
    with pytest.raises(ValueError, match="multiple of"):
        preset("tiny", heads=3)
