"""Small helpers shared by the kernel tests."""
import torch


def assert_close(actual, expected, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def leaf(*shape, scale=1.0):
    """A random fp32 leaf tensor that requires grad."""
    return (torch.randn(*shape) * scale).requires_grad_()


def grads(*tensors):
    """The .grad of each tensor (cloned), then cleared."""
    out = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out
