"""`framelab bench vl --quick`: a tiny Qwen3-VL training step runs on both sides from the same
weights (equal losses before training), and every figure is written (speed ratios are not
asserted: timing on a shared machine is noisy)."""
import json
import math
import os

import pytest

from framelab.benchmarks import vl

pytest.importorskip("transformers")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"),
                    reason="peak memory is read from /proc (Linux)")
def test_bench_vl_quick_writes_figures(tmp_path, capsys, monkeypatch):
    def in_process(module, argv):      # the probe's own code, without a fresh interpreter
        assert module == "framelab.benchmarks.vl"
        args = vl.parse(argv)
        assert args.quick and args.memory_of in ("framelab", "transformers")
        return vl.measure_memory(args.memory_of, args)

    monkeypatch.setattr(vl, "peak_in_subprocess", in_process)
    out = tmp_path / "vl.json"
    assert vl.main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["shape"] == vl.QUICK_SHAPE and result["video_grid_thw"] == [1, 4, 4]
    assert 0 <= result["loss_diff"] < 1e-4
    for side in ("framelab", "transformers"):
        assert math.isfinite(result["tokens_per_s"][side]) and result["tokens_per_s"][side] > 0
        assert result["peak_bytes"][side] >= 0   # in process a step may reuse freed memory
    assert result["speedup"] == pytest.approx(
        result["tokens_per_s"]["framelab"] / result["tokens_per_s"]["transformers"])
    if result["peak_bytes"]["transformers"]:
        assert result["memory_ratio"] == pytest.approx(
            result["peak_bytes"]["framelab"] / result["peak_bytes"]["transformers"])
    assert "speedup vs transformers" in capsys.readouterr().out


def test_bench_vl_rejects_a_video_longer_than_the_row():
    with pytest.raises(SystemExit, match="raise --seq"):
        vl.batch(vl.QUICK_SHAPE, rows=1, seq=20, frames=4, size=64)


def test_bench_vl_is_listed():
    from framelab.benchmarks import available
    assert "vl" in available()
