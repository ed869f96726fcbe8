"""Fixtures for the kernel tests: every test leaves the backend registry as it found it.

The Triton kernels run on CPU through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported), so shapes stay small."""
import pytest
import torch

from framelab.kernels import get_backends, set_backends


@pytest.fixture(autouse=True)
def _restore_backends():
    before = get_backends()
    yield
    set_backends(**before)


@pytest.fixture
def triton_backend():
    """Force the Triton kernels (interpreted on CPU)."""
    pytest.importorskip("triton")
    set_backends(kernels="triton")


@pytest.fixture
def torch_backend():
    set_backends(kernels="torch")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
