"""Test-wide settings. Triton kernels run on CPU through its numpy interpreter; the variable must be
set before triton is first imported, so it is set here, before any test module loads."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (results that depend on reduction order stay fixed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
