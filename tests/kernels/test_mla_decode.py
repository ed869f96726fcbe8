"""M²LA decode over the latent cache: the reference against full (decompressed) attention, and
the Triton split-K kernel (interpreted) against the reference on ragged batches."""
import math

import pytest
import torch

from framelab.kernels import mla_decode
from framelab.kernels.mla_decode import mla_decode_reference
from tests.kernels._helpers import assert_close


def _inputs(B, H, T, d_c=48, d_r=16):
    return (torch.randn(B, H, d_c), torch.randn(B, H, d_r), torch.randn(B, T, d_c),
            torch.randn(B, T, d_r))


def test_reference_equals_decompressed_attention():
    """Absorbing W_uk into the query and W_uv after the latent sum gives standard attention with
    keys [W_uk c ; k_rope] and values W_uv c, masked to each row's length."""
    B, H, T, d_c, d_r, d_n, d_v = 2, 3, 9, 20, 8, 12, 10
    q_nope, q_rope, c_kv, k_rope = torch.randn(B, H, d_n), torch.randn(B, H, d_r), \
        torch.randn(B, T, d_c), torch.randn(B, T, d_r)
    w_uk, w_uv = torch.randn(H, d_n, d_c), torch.randn(H, d_v, d_c)
    lengths = torch.tensor([9, 4])
    scale = 1 / math.sqrt(d_n + d_r)
    q_latent = torch.einsum("bhn,hnc->bhc", q_nope, w_uk)
    out = torch.einsum("bhc,hvc->bhv", mla_decode_reference(q_latent, q_rope, c_kv, k_rope,
                                                            lengths, scale), w_uv)
    for b in range(B):
        L = int(lengths[b])
        k = torch.cat([torch.einsum("hnc,tc->htn", w_uk, c_kv[b, :L]),
                       k_rope[b, :L].expand(H, L, d_r)], -1)
        v = torch.einsum("hvc,tc->htv", w_uv, c_kv[b, :L])
        q = torch.cat([q_nope[b], q_rope[b]], -1)
        p = torch.softmax(torch.einsum("hd,htd->ht", q, k) * scale, -1)
        assert_close(out[b], torch.einsum("ht,htv->hv", p, v), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("B,H,T,lengths", [
    (1, 1, 1, [1]),
    (3, 5, 70, [70, 1, 33]),
    (2, 17, 40, [0, 40]),  # an empty row gives zeros
    (1, 65, 20, [13]),
])
def test_triton_matches_reference(B, H, T, lengths, triton_backend):
    q_latent, q_rope, c_kv, k_rope = _inputs(B, H, T)
    lengths = torch.tensor(lengths)
    out = mla_decode(q_latent, q_rope, c_kv, k_rope, lengths, 0.13)
    ref = mla_decode_reference(q_latent, q_rope, c_kv, k_rope, lengths, 0.13)
    assert_close(out, ref)


def test_wide_latent_spans_several_head_blocks(triton_backend):
    """d_c = 300 pads to 512, which caps a program at 16 heads: 40 heads take three blocks."""
    q_latent, q_rope, c_kv, k_rope = _inputs(2, 40, 19, d_c=300)
    lengths = torch.tensor([19, 6])
    assert_close(mla_decode(q_latent, q_rope, c_kv, k_rope, lengths, 0.05),
                 mla_decode_reference(q_latent, q_rope, c_kv, k_rope, lengths, 0.05))


@pytest.mark.parametrize("splits", [2, 3])
def test_split_k_combine(splits, triton_backend):
    """Spans of the cache merged by log-sum-exp; one row ends inside the first span, so later
    spans of that row are empty."""
    from framelab.kernels.triton_mla_decode import mla_decode_triton

    q_latent, q_rope, c_kv, k_rope = _inputs(2, 4, 75)
    lengths = torch.tensor([75, 5])
    out = mla_decode_triton(q_latent, q_rope, c_kv, k_rope, lengths, 0.2, num_splits=splits)
    assert_close(out, mla_decode_reference(q_latent, q_rope, c_kv, k_rope, lengths, 0.2))


def test_strided_cache_views(triton_backend):
    """The cache as a slice of a larger preallocated buffer (stride along T > d_c)."""
    buffer = torch.randn(2, 50, 48 + 16)
    c_kv, k_rope = buffer[:, :37, :48], buffer[:, :37, 48:]
    q_latent, q_rope = torch.randn(2, 3, 48), torch.randn(2, 3, 16)
    lengths = torch.tensor([37, 20])
    assert_close(mla_decode(q_latent, q_rope, c_kv, k_rope, lengths, 0.1),
                 mla_decode_reference(q_latent, q_rope, c_kv, k_rope, lengths, 0.1))


def test_gradients_take_the_reference(triton_backend):
    q_latent, q_rope, c_kv, k_rope = _inputs(1, 2, 5)
    q_latent.requires_grad_()
    mla_decode(q_latent, q_rope, c_kv, k_rope, torch.tensor([5]), 0.3).sum().backward()
    assert q_latent.grad is not None


def test_shape_errors_name_the_layout():
    with pytest.raises(ValueError, match=r"c_kv \(B,T,d_c\)"):
        mla_decode(torch.randn(1, 2, 8), torch.randn(1, 2, 4), torch.randn(1, 5, 9),
                   torch.randn(1, 5, 4), torch.tensor([5]), 0.3)
