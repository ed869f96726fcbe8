"""MultimodalLM: vision tokens spliced at placeholders, 3D positions, packed documents."""
import pytest
import torch

from framelab.kernels import AttentionSpec
from framelab.models import DecoderLM, MultimodalLM, VisionConfig, preset
from framelab.models.multimodal import multimodal_positions
from framelab.models.vision import video_token_count

VID = 7


def test_packed_documents_equal_separate_forwards():
    torch.manual_seed(0)
    m = DecoderLM(preset("tiny")).eval()
    docs = [torch.randint(0, 512, (1, n)) for n in (5, 9, 3)]
    packed = torch.cat(docs, 1)
    cu = torch.tensor([0, 5, 14, 17], dtype=torch.int32)
    with torch.no_grad():
        out = m(packed, spec=AttentionSpec(causal=True, cu_seqlens=cu)).logits
        ref = torch.cat([m(d).logits for d in docs], 1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_text_positions_are_plain_and_video_positions_follow_the_grid():
    ids = torch.tensor([[1, 2, 3, 4]])
    assert multimodal_positions(ids, VID, []).tolist() == [[[0, 1, 2, 3]]] * 3
    ids = torch.tensor([[1] + [VID] * 8 + [2]])
    pos = multimodal_positions(ids, VID, [(2, 2, 2)])[:, 0]
    assert pos[:, 0].tolist() == [0, 0, 0]
    assert pos[0, 1:9].tolist() == [1, 1, 1, 1, 2, 2, 2, 2]   # t
    assert pos[1, 1:9].tolist() == [1, 1, 2, 2, 1, 1, 2, 2]   # h
    assert pos[2, 1:9].tolist() == [1, 2, 1, 2, 1, 2, 1, 2]   # w
    assert pos[:, 9].tolist() == [3, 3, 3]                    # next text: start + max(t, h, w)
    with pytest.raises(ValueError, match="consecutive"):
        multimodal_positions(torch.tensor([[VID] * 5]), VID, [(2, 2, 2)])


def test_text_only_multimodal_equals_decoder():
    torch.manual_seed(0)
    cfg = preset("tiny", vision=VisionConfig())
    mm = MultimodalLM(cfg, VID).eval()
    ids = torch.randint(8, 512, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(mm(ids).logits, mm.lm(ids).logits)


def test_videos_change_only_later_tokens_and_batch_like_alone():
    torch.manual_seed(0)
    cfg = preset("tiny", vision=VisionConfig())
    mm = MultimodalLM(cfg, VID).eval()
    v1, v2 = torch.rand(4, 3, 32, 32), torch.rand(2, 3, 16, 32)
    n1 = video_token_count(4, 32, 32, cfg.vision)
    n2 = video_token_count(2, 16, 32, cfg.vision)
    assert (n1, n2) == (8, 2)
    row1 = torch.tensor([[9, 10] + [VID] * n1 + [11]])
    row2 = torch.tensor([[12] + [VID] * n2 + [13, 14]])
    with torch.no_grad():
        a = mm(row1, [v1]).logits
        b = mm(row1, [torch.rand(4, 3, 32, 32)]).logits
        assert torch.allclose(a[:, :2], b[:, :2], atol=1e-6)   # causal: text before is unchanged
        assert not torch.allclose(a[:, -1], b[:, -1])          # the answer depends on the video
        # two documents packed in one row, with their videos in order, equal separate forwards
        packed = torch.cat([row1, row2], 1)
        cu = torch.tensor([0, row1.shape[1], packed.shape[1]], dtype=torch.int32)
        out = mm(packed, [v1, v2], cu_seqlens=cu).logits
        ref = torch.cat([a, mm(row2, [v2]).logits], 1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_vision_gradients_reach_the_encoder():
    cfg = preset("tiny", vision=VisionConfig())
    mm = MultimodalLM(cfg, VID)
    ids = torch.tensor([[1] + [VID] * 8 + [2]])
    mm(ids, [torch.rand(4, 3, 32, 32)]).logits.sum().backward()
    assert mm.vision.patch_embed.weight.grad.abs().sum() > 0


def test_vision_rotary_resolves_rows_and_columns_alike():
    """Each of the vision encoder's 2D rotary axes spans the full frequency range (Qwen2-VL): a
    one-patch step along w rotates some frequency pair as much as a step along h. (Regression:
    a contiguous split gave w only the lowest frequencies, < 0.01 rad per patch.)"""
    from framelab.models.vision import VisionEncoder

    enc = VisionEncoder(VisionConfig(width=64, heads=2))
    origin = enc.rotary(torch.zeros(2, 1, 1, dtype=torch.long))[1]
    for step in ([[[1]], [[0]]], [[[0]], [[1]]]):            # one patch down / right
        sin = enc.rotary(torch.tensor(step))[1]
        assert float((sin - origin).abs().max()) > 0.5


def test_vision_input_is_centred():
    """Pixels in [0, 1] reach the patch embedding centred on zero (mid-grey -> 0, black -> -1).
    (Regression: raw [0, 1] input on a dark background stalled learning from video.)"""
    from framelab.models.vision import VisionEncoder

    enc = VisionEncoder(VisionConfig(width=32, heads=2))
    grey, _, _, _ = enc._tubelets(torch.full((2, 3, 32, 32), 0.5))
    black, _, _, _ = enc._tubelets(torch.zeros(2, 3, 32, 32))
    assert float(grey.abs().max()) == 0.0 and float(black.max()) == -1.0


def test_vision_pixel_statistics_are_configurable():
    """pixel_mean / pixel_std normalise per channel (the world experiments centre the world's dark
    background on zero); a wrong number of values or a non-positive std is an error."""
    from framelab.models.vision import VisionEncoder

    cfg = VisionConfig(width=32, heads=2, pixel_mean=[0.1, 0.2, 0.3], pixel_std=[0.1, 0.1, 0.2])
    video = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1).expand(2, 3, 32, 32).clone()
    centred, _, _, _ = VisionEncoder(cfg)._tubelets(video)
    assert float(centred.abs().max()) < 1e-6
    video[:, 2] = 0.5                                   # blue channel one std above its mean
    x, _, _, _ = VisionEncoder(cfg)._tubelets(video)
    assert float(x.max()) == pytest.approx(1.0) and float(x.min()) == pytest.approx(0.0, abs=1e-6)
    for bad in ({"pixel_mean": [0.5, 0.5]}, {"pixel_std": [0.5, 0.0, 0.5]}):
        with pytest.raises(ValueError):
            VisionConfig(**bad)
