"""Qwen3-VL as a configuration of framelab's MultimodalLM: tiny random transformers Qwen3-VL models
(built in-process, saved, loaded with `load_hf`) give the same logits (fp32, CPU, 1e-4) for text,
images and videos in padded batches, the same greedy tokens with framelab's KV cache as
transformers' `generate`, and survive `export_hf`; the presets have transformers' parameter counts.
"""
import json

import pytest
import torch

from framelab.errors import UserError
from framelab.models import MultimodalLM, export_hf, load_hf, preset
from framelab.models.generation import decode
from framelab.models.hf_qwen3_vl import config_to_hf
from framelab.models.qwen3_vl import frame_timestamps, video_prompt

transformers = pytest.importorskip("transformers")

IMG, VID, VS, VE = 290, 291, 292, 293
PATCH = 3 * 2 * 4 * 4          # channels x temporal patch x patch x patch


def _hf_config(tie: bool):
    return transformers.Qwen3VLConfig(
        text_config=dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [2, 3, 3], "mrope_interleaved": True}),
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=48, num_heads=2,
                           patch_size=4, out_hidden_size=64, num_position_embeddings=16,
                           deepstack_visual_indexes=[0, 2]),
        image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS, vision_end_token_id=VE,
        tie_word_embeddings=tie)


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def pair(request, tmp_path_factory):
    """(transformers model, framelab model loaded from its save_pretrained directory)."""
    torch.manual_seed(0)
    hf = transformers.Qwen3VLForConditionalGeneration(_hf_config(request.param)).eval()
    with torch.no_grad():  # norms start at 1, biases at 0: perturb so a wrong mapping shows
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("qwen3vl") / "hf"
    hf.save_pretrained(path)
    ours = load_hf(path)
    assert isinstance(ours, MultimodalLM) and ours.config.tie_embeddings == request.param
    return hf, ours


def _types(ids):
    return (ids == IMG).int() + 2 * (ids == VID).int()


def _batch(rows):
    """Left-pad token lists: (input_ids, attention_mask)."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def _image(h, w):
    """Placeholder tokens of an image of h x w patches (one temporal step)."""
    return [VS] + [IMG] * (h * w // 4) + [VE]


def _video(t, h, w, seconds):
    """Qwen3-VL's rendering of a video: per temporal step a timestamp (here two stand-in text
    tokens for `<t seconds>`) and the step's own placeholder run."""
    out = []
    for i in range(t):
        out += [10 + i, int(seconds * 10) % 50 + 100, VS] + [VID] * (h * w // 4) + [VE]
    return out


def _compare(hf, ours, ids, mask, **vision):
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, mm_token_type_ids=_types(ids),
                 **vision).logits
        got = ours(input_ids=ids, attention_mask=mask, **vision).logits
    keep = mask.bool()
    diff = float((got[keep] - ref[keep]).abs().max())
    assert diff < 1e-4, diff
    return diff


def test_text_logits_match(pair):
    hf, ours = pair
    ids = torch.randint(0, 280, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(input_ids=ids).logits,
                                   atol=1e-4, rtol=1e-4)
    right = torch.ones(2, 13, dtype=torch.long)
    right[1, 9:] = 0                      # right padding: both count positions from 0
    _compare(hf, ours, ids, right)


def test_image_logits_match_in_a_padded_batch(pair):
    hf, ours = pair
    torch.manual_seed(1)
    grids = [(1, 4, 6), (1, 2, 2), (1, 6, 4)]   # row 0 holds two images, row 1 one
    rows = [[1, 2] + _image(4, 6) + [3] + _image(2, 2) + [4, 5], [6] + _image(6, 4) + [7, 8, 9]]
    ids, mask = _batch(rows)
    pixels = torch.randn(sum(t * h * w for t, h, w in grids), PATCH)
    _compare(hf, ours, ids, mask, pixel_values=pixels, image_grid_thw=torch.tensor(grids))


def test_video_and_image_logits_match_in_a_padded_batch(pair):
    hf, ours = pair
    torch.manual_seed(2)
    videos = [(2, 4, 4), (3, 2, 4)]
    rows = [[1] + _video(2, 4, 4, 0.5) + [2, 3],
            [4, 5] + _image(2, 2) + [6] + _video(3, 2, 4, 1.0) + [7]]
    ids, mask = _batch(rows)
    vpix = torch.randn(sum(t * h * w for t, h, w in videos), PATCH)
    ipix = torch.randn(4, PATCH)
    _compare(hf, ours, ids, mask, pixel_values_videos=vpix, video_grid_thw=torch.tensor(videos),
             pixel_values=ipix, image_grid_thw=torch.tensor([(1, 2, 2)]))


def test_frames_give_the_pixel_values_of_transformers_layout(pair):
    """framelab's own video path (frames in [0, 1], normalised and cut by the tower) equals
    feeding the same patches as pixel_values_videos."""
    hf, ours = pair
    torch.manual_seed(3)
    frames = torch.rand(4, 3, 16, 8)                       # grid (2, 4, 2)
    pixels, grid = ours.vision.patchify(frames)
    assert grid == (2, 4, 2) and pixels.shape == (16, PATCH)
    ids = torch.tensor([[1] + _video(2, 4, 2, 0.5) + [2]])
    with torch.no_grad():
        a = ours(ids, [frames]).logits
        b = hf(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=torch.tensor([grid]),
               mm_token_type_ids=_types(ids)).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_greedy_generation_with_cache_matches_transformers(pair):
    hf, ours = pair
    torch.manual_seed(4)
    clips = [torch.rand(2, 3, 8, 8), torch.rand(3, 3, 8, 16)]   # grids (1, 2, 2), (2, 2, 4)
    rows = [[1, 2] + _video(1, 2, 2, 0.5) + [3], [4] + _video(2, 2, 4, 1.0) + [5, 6, 7]]
    gen = decode(ours, rows, 6, videos=[[clips[0]], [clips[1]]])
    uncached = decode(ours, rows, 6, videos=[[clips[0]], [clips[1]]], use_cache=False)
    assert gen.tokens == uncached.tokens
    patches = [ours.vision.patchify(c) for c in clips]
    ids, mask = _batch(rows)
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, mm_token_type_ids=_types(ids),
                          pixel_values_videos=torch.cat([p for p, _ in patches]),
                          video_grid_thw=torch.tensor([g for _, g in patches]),
                          max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert gen.tokens == out[:, ids.shape[1]:].tolist()
    text = [[5, 6, 7], [8, 9, 10, 11, 12]]
    ids, mask = _batch(text)
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                          pad_token_id=0)
    assert decode(ours, text, 5).tokens == out[:, ids.shape[1]:].tolist()


def test_export_round_trip(pair, tmp_path):
    hf, ours = pair
    export_hf(ours, tmp_path / "out")
    back = transformers.Qwen3VLForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    again = load_hf(tmp_path / "out")
    torch.manual_seed(5)
    ids, mask = _batch([[1] + _image(4, 4) + [2], [3, 4] + _video(2, 2, 2, 0.5)])
    vision = dict(pixel_values=torch.randn(16, PATCH), image_grid_thw=torch.tensor([(1, 4, 4)]),
                  pixel_values_videos=torch.randn(8, PATCH),
                  video_grid_thw=torch.tensor([(2, 2, 2)]))
    _compare(back, ours, ids, mask, **vision)
    _compare(hf, again, ids, mask, **vision)


def test_sharded_checkpoint_and_clear_errors(pair, tmp_path):
    hf, ours = pair
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ids = torch.randint(0, 280, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(load_hf(tmp_path / "sharded")(ids).logits, ours(ids).logits)
    export_hf(ours, tmp_path / "bad")
    weights = tmp_path / "bad" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot be read as safetensors"):
        load_hf(tmp_path / "bad")
    weights.write_bytes(data)
    cfg = json.loads((tmp_path / "bad" / "config.json").read_text())
    cfg["vision_config"]["intermediate_size"] = 50
    (tmp_path / "bad" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="has shape"):
        load_hf(tmp_path / "bad")
    weights.unlink()
    with pytest.raises(UserError, match="missing"):
        load_hf(tmp_path / "bad")


@pytest.mark.parametrize("name", ["qwen3-vl-2b", "qwen3-vl-4b", "qwen3-vl-8b"])
def test_presets_have_transformers_parameter_counts(name):
    cfg = preset(name)
    with torch.device("meta"):
        ours = MultimodalLM(cfg, 151656, 151655)
        theirs = transformers.Qwen3VLForConditionalGeneration(
            transformers.Qwen3VLConfig(**config_to_hf(cfg)))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_video_timestamps_as_qwen3_vl_renders_them():
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    for indices, fps in (([0, 12, 24, 36], 24.0), ([0, 5, 10], 10.0), ([3], 2.0)):
        expected = Qwen3VLProcessor._calculate_timestamps(None, list(indices), fps, 2)
        assert frame_timestamps(indices, fps) == pytest.approx(expected)
    assert video_prompt([0.25, 1.0], 2) == ("<0.2 seconds><|vision_start|><|video_pad|>"
                                            "<|video_pad|><|vision_end|><1.0 seconds>"
                                            "<|vision_start|><|video_pad|><|video_pad|>"
                                            "<|vision_end|>")


def test_packed_documents_equal_separate_forwards(pair):
    """framelab's packing (documents in one row, cu_seqlens): positions restart per document and
    each document takes its own images and videos, as if run alone."""
    _, ours = pair
    torch.manual_seed(6)
    docs = [[1] + _image(2, 4) + [2], [3, 4] + _video(2, 2, 2, 0.5) + [5], [6, 7, 8]]
    pix = {0: dict(pixel_values=torch.randn(8, PATCH), image_grid_thw=torch.tensor([(1, 2, 4)])),
           1: dict(pixel_values_videos=torch.randn(8, PATCH),
                   video_grid_thw=torch.tensor([(2, 2, 2)])), 2: {}}
    packed = torch.tensor([sum(docs, [])])
    cu = torch.tensor([0, len(docs[0]), len(docs[0]) + len(docs[1]), packed.shape[1]],
                      dtype=torch.int32)
    with torch.no_grad():
        got = ours(packed, cu_seqlens=cu, pixel_values=pix[0]["pixel_values"],
                   image_grid_thw=pix[0]["image_grid_thw"], **pix[1]).logits
        ref = torch.cat([ours(torch.tensor([d]), **pix[i]).logits for i, d in enumerate(docs)], 1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_placeholders_without_vision_inputs_are_an_error(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="placeholder runs"):
        ours(torch.tensor([[1] + _image(2, 2) + [2]]))
    with pytest.raises(TypeError, match="unsupported inputs"):
        ours(torch.tensor([[1, 2]]), labels=torch.tensor([[1, 2]]))
