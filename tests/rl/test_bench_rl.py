"""`framelab bench rl --quick`: the rollout-speed section runs end to end on a tiny model and
writes every figure (no speed ratios are asserted: timing on a shared machine is noisy)."""
import json
import math

import torch

from framelab.benchmarks import rl

KEYS = ("cache_speedup", "speedup_vs_transformers", "speedup_vs_transformers_sample",
        "framelab_cached_tok_s", "framelab_uncached_tok_s", "framelab_cached_greedy_tok_s",
        "transformers_greedy_tok_s", "transformers_sample_tok_s")


def test_bench_rl_quick_writes_figures(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "b.json"
    assert rl.main(["--quick", "--threads", "1", "--json", str(out)]) == 0
    assert torch.get_num_threads() == threads        # main restores the thread count
    result = json.loads(out.read_text())
    for key in KEYS:
        assert math.isfinite(result[key]) and result[key] > 0, key
    # the logit-parity guard ran before timing, and the greedy outputs were compared
    assert 0 <= result["logit_max_abs_diff"] < 1e-3
    for key in ("step_rollout_s", "step_update_s", "step_rollout_tokens_per_s"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert 0 < result["rollout_share"] < 1
    assert 0.5 <= result["token_agreement"] <= 1
    assert result["batch"] == 2 and result["new_tokens"] == 8
    assert len(result["prompt_lens"]) == 2 and result["machine"]
    assert result["shape"]["hidden"] == rl.QUICK_SHAPE["hidden"]
    rows = result["rows"]
    assert {(r["impl"], r["cache"], r["decoding"]) for r in rows} == {
        ("framelab", "on", "sample"), ("framelab", "off", "sample"), ("framelab", "on", "greedy"),
        ("transformers", "on", "greedy"), ("transformers", "on", "sample")}
    assert all(r["tok_s"] > 0 and r["seconds"] > 0 for r in rows)


def test_bench_rl_is_listed():
    from framelab.benchmarks import available

    assert "rl" in available()
