"""Shared helpers for benchmarks: timing, table printing, JSON output."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def timeit(fn, warmup: int = 1, repeat: int = 3) -> float:
    """Median seconds of `fn()` over `repeat` runs after `warmup` runs (synchronising CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def time_alternately(steps: dict, repeat: int) -> dict:
    """Median seconds of each `steps[name]()` over `repeat` rounds that run every step once in
    turn (after one warm-up call each), so drift in the machine's load hits all of them."""
    times = {name: [] for name in steps}
    for _ in range(repeat):
        for name, fn in steps.items():
            times[name].append(timeit(fn, warmup=0 if times[name] else 1, repeat=1))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def print_table(rows: list[dict], columns: list[str]) -> None:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def step_peak_bytes(step) -> int:
    """Peak bytes one call of `step()` adds: CUDA's `max_memory_allocated`, or on CPU the peak
    resident set above the resident set before it (meaningful in a fresh process whose malloc
    returns freed memory to the OS; see `peak_in_subprocess`)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak resident set (VmHWM)
        f.write("5")
    base = _status("VmRSS:")
    step()
    return _status("VmHWM:") - base


def peak_in_subprocess(module: str, argv: list[str]) -> int:
    """Run `python -m module *argv` in a fresh process (fixed malloc mmap threshold) and read the
    `peak_bytes` of the JSON object on its last output line."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True,
                         env=env)
    if out.returncode:
        raise RuntimeError(f"memory probe {module} failed: {out.stderr.strip()[-400:]}")
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])
