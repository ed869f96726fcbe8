"""Test-wide settings. Triton kernels run on CPU through its numpy interpreter; the variable must be
set before triton is first imported, so it is set here, before any test module loads."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")
