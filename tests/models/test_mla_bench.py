"""The M²LA benchmark's cache accounting: measured bytes per token per layer are the layer's
(latent + rotary key) vs GQA's (keys + values), fp32, and the ratio is their quotient."""
from framelab.benchmarks.mla import speed_table


def test_speed_table_reports_measured_cache_sizes():
    result = speed_table([32], batch=1, steps=1, device="cpu")
    assert result["gqa_bytes_per_token_per_layer"] == 2 * 4 * 64 * 4
    assert result["mla_bytes_per_token_per_layer"] == (224 + 4 * 8) * 4
    assert result["kv_bytes_ratio"] == 2.0
    row = result["decode"][0]
    assert row["gqa_tok_s"] > 0 and row["mla_tok_s"] > 0
    assert row["gqa_cache_mib"] == 0.25 and row["mla_cache_mib"] == 0.125   # x 4 layers x 32
