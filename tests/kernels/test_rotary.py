"""Triton rotary (interpreted) against the rotate-half reference, forward and backward, fp32:
text angles, multimodal (t, h, w) section angles, and M²LA's decoupled key (H = 1, a slice)."""
import pytest
import torch

from framelab.kernels import apply_rotary
from framelab.kernels.rotary import apply_rotary_reference
from tests.kernels._helpers import assert_close, grads, leaf


def _angles(positions: torch.Tensor, half: int) -> torch.Tensor:
    """(B, S) positions -> (B, S, half) angles with the usual inverse frequencies."""
    inv_freq = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32) / half))
    return positions.float()[..., None] * inv_freq


def _check(x, cos, sin):
    dy = torch.randn(x.shape)
    y = apply_rotary(x, cos, sin)
    (y * dy).sum().backward()
    (gx,) = grads(x)
    ref = apply_rotary_reference(x, cos, sin)
    (ref * dy).sum().backward()
    assert_close(y, ref)
    assert_close(gx, x.grad)


@pytest.mark.parametrize("B,S,H,D", [(1, 1, 1, 48), (2, 7, 3, 80), (2, 33, 5, 18)])
def test_rotary_text_positions(B, S, H, D, triton_backend):
    x = leaf(B, S, H, D)
    start = torch.tensor([[5], [11]])[:B]  # nonzero angles even at length 1
    ang = _angles(torch.arange(S).expand(B, S) + start, D // 2)
    _check(x, ang.cos(), ang.sin())


def test_rotary_shared_table_broadcasts_over_batch(triton_backend):
    x = leaf(3, 7, 2, 48)
    ang = _angles(torch.arange(7)[None], 24)  # (1, S, half): one table for every row
    _check(x, ang.cos(), ang.sin())


def test_rotary_multimodal_sections(triton_backend):
    """Angles from (t, h, w) positions, one section of frequency pairs per axis (M-RoPE style),
    ragged per row: the kernel must take arbitrary per-(batch, position) angles."""
    B, S, H, D = 2, 33, 3, 40
    half = D // 2
    sections = (8, 6, 6)  # pairs driven by t, h, w
    thw = torch.stack([torch.randint(0, 9, (B, S)) for _ in range(3)])  # (3, B, S)
    axis_of_pair = torch.repeat_interleave(torch.arange(3), torch.tensor(sections))
    pos = thw[axis_of_pair].permute(1, 2, 0)  # (B, S, half): the position each pair sees
    inv_freq = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32) / half))
    ang = pos.float() * inv_freq
    x = leaf(B, S, H, D)
    _check(x, ang.cos(), ang.sin())


def test_rotary_decoupled_key_slice(triton_backend):
    """M²LA's shared rotary key: the last d_r channels of the kv projection, one head, a view."""
    B, S, d_c, d_r = 2, 7, 48, 16
    kv = leaf(B, S, d_c + d_r)
    k_rope = kv[..., d_c:].unsqueeze(2)  # (B, S, 1, d_r), non-contiguous
    ang = _angles(torch.arange(S).expand(B, S), d_r // 2)
    dy = torch.randn(B, S, 1, d_r)
    (apply_rotary(k_rope, ang.cos(), ang.sin()) * dy).sum().backward()
    (got,) = grads(kv)
    (apply_rotary_reference(k_rope, ang.cos(), ang.sin()) * dy).sum().backward()
    assert_close(got, kv.grad)
    assert got[..., :d_c].abs().max() == 0


def test_rotary_angle_gradients_fall_back_to_reference(triton_backend):
    x = leaf(1, 3, 2, 8)
    ang = leaf(1, 3, 4)
    apply_rotary(x, ang.cos(), ang.sin()).sum().backward()
    assert ang.grad is not None and ang.grad.abs().sum() > 0


def test_rotary_rejects_odd_width(triton_backend):
    with pytest.raises(ValueError, match="even D"):
        apply_rotary(torch.randn(1, 2, 1, 7), torch.randn(1, 2, 3), torch.randn(1, 2, 3))
