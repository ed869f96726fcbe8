"""Fixtures for the kernel tests: every test leaves the kernel backend as it found it.

The Triton kernels run on CPU through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported), so shapes stay small."""
import pytest
import torch

from framelab.kernels import get_kernel_backend, set_kernel_backend


@pytest.fixture(autouse=True)
def _restore_backend():
    before = get_kernel_backend()
    yield
    set_kernel_backend(before)


@pytest.fixture
def triton_backend():
    """Force the Triton kernels (interpreted on CPU)."""
    pytest.importorskip("triton")
    set_kernel_backend("triton")


@pytest.fixture
def torch_backend():
    set_kernel_backend("torch")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
