"""The kernels also compile for a real GPU (sm_90 cubins, through Triton's own ptxas), checked
without one: the interpreter runs Python semantics and would not catch a type error the compiler
rejects (loop-carried dtypes, tl.dot operand dtypes and sizes)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("_compile_sm90.py")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.count("ok ") == 16
