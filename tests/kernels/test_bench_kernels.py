"""`framelab bench kernels` end to end at a tiny size: both variants measured in fresh processes,
the same loss from each, the ratio reported, the CUDA part skipped with a message on CPU."""
import json
import os

import pytest
import torch

from framelab.benchmarks import kernels as bench


@pytest.mark.skipif(not os.path.exists("/proc/self/status"),
                    reason="peak memory is read from /proc (Linux)")
def test_bench_kernels_cpu_memory(tmp_path, capsys):
    out = tmp_path / "kernels.json"
    rc = bench.main(["--tokens", "64", "--vocab", "500", "--d-model", "16", "--chunks", "16",
                     "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    plain, chunked = result["ce"]["rows"]
    assert chunked["chunk"] == 16 and plain["chunk"] == "-"
    assert abs(chunked["loss"] - plain["loss"]) < 1e-4
    assert result["ce_memory_ratio"] == pytest.approx(chunked["peak_mb"] / plain["peak_mb"])
    printed = capsys.readouterr().out
    assert "ce_memory_ratio" in printed
    if not torch.cuda.is_available():
        assert "skipped" in result["cuda"] and "CUDA kernel comparisons skipped" in printed


def test_bench_kernels_refuses_what_memory_cannot_hold(monkeypatch, capsys):
    monkeypatch.setattr(bench, "_mem_available_mb", lambda: 100.0)
    assert bench.main(["--tokens", "8192", "--vocab", "150000"]) == 1
    assert "lower --tokens or --vocab" in capsys.readouterr().err


def test_kernel_table_harness_on_tiny_cpu_shapes(capsys):
    """The GPU table's harness (cases, variants, timing, deviation from the reference) driven at
    tiny fp32 shapes on CPU through the interpreter, so a GPU session starts from working code."""
    pytest.importorskip("triton")
    result = bench.bench_cuda(device="cpu", dtype=torch.float32, size=bench.TINY,
                              compile_reference=False, repeat=1)
    rows = result["rows"]
    assert [r["variant"] for r in rows] == ["reference", "triton"] * 6
    for row in rows:
        assert "error" not in row, row
        assert row["fwd_ms"] > 0
    for row in rows[1::2]:
        assert row["max_err"] < 1e-4, row
    assert "speedup" in rows[1] and "max_err" in capsys.readouterr().out
