"""framelab's Qwen3-VL preprocessing equals transformers' processors (Qwen2VLImageProcessor as
Qwen3-VL configures it, Qwen3VLVideoProcessor), built in-process without downloads. Pixels are
compared exactly (max abs diff 0.0), grids and sampled frame indices for equality."""
import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor  # noqa: E402
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor  # noqa: E402
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor  # noqa: E402

from framelab.datamodules import qwen3_vl_inputs as q  # noqa: E402
from framelab.errors import UserError  # noqa: E402

IMAGE = q.VisionPreprocess(min_pixels=128 * 128, max_pixels=320 * 320)
VIDEO = q.VisionPreprocess(min_pixels=4096, max_pixels=96 * 96 * 16)


def image_processor(cfg):
    return Qwen2VLImageProcessor(patch_size=cfg.patch_size, merge_size=cfg.merge_size,
                                 temporal_patch_size=cfg.temporal_patch_size,
                                 image_mean=list(cfg.image_mean), image_std=list(cfg.image_std),
                                 size={"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels})


def video_processor(cfg):
    return Qwen3VLVideoProcessor(size={"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels},
                                 cap_pixels_per_frame=cfg.cap_pixels_per_frame,
                                 max_video_tokens=cfg.max_video_tokens, fps=cfg.fps,
                                 image_mean=list(cfg.image_mean), image_std=list(cfg.image_std))


def pixels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def same(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    assert (a - b).abs().max().item() == 0.0


# (height, width): not multiples of 32, a tiny one upscaled to min_pixels, a large one limited by
# max_pixels, a multiple of 32, a wide one
@pytest.mark.parametrize("hw", [(50, 70), (200, 333), (10, 12), (900, 640), (128, 160), (40, 400)])
def test_image_equals_processor(hw):
    im = pixels((*hw, 3))
    ref = image_processor(IMAGE)(images=[im], return_tensors="pt")
    pv, grid = q.image_inputs(im, IMAGE)
    assert grid.tolist() == ref["image_grid_thw"].tolist()
    same(pv, ref["pixel_values"])


def test_image_sizes_follow_the_pixel_limits():
    assert q.image_size(10, 12, IMAGE)[0] * q.image_size(10, 12, IMAGE)[1] >= IMAGE.min_pixels
    h, w = q.image_size(900, 640, IMAGE)
    assert h * w <= IMAGE.max_pixels and h % 32 == 0 and w % 32 == 0


def test_several_images_of_different_sizes_and_float_input():
    ims = [pixels((50, 70, 3), 1), pixels((200, 333, 3), 2), pixels((10, 12, 3), 3)]
    ref = image_processor(IMAGE)(images=ims, return_tensors="pt")
    pv, grid = q.image_inputs(ims, IMAGE)
    assert grid.tolist() == ref["image_grid_thw"].tolist()
    same(pv, ref["pixel_values"])
    # float frames in [0, 1] equal the processor called with do_rescale=False
    fl = [torch.from_numpy(im).float() / 255 for im in ims]
    ref = image_processor(IMAGE)(images=[f.permute(2, 0, 1) for f in fl], do_rescale=False,
                                 return_tensors="pt")
    pv, grid = q.image_inputs([f.numpy() for f in fl], IMAGE)
    assert grid.tolist() == ref["image_grid_thw"].tolist()
    same(pv, ref["pixel_values"])


def test_default_image_preset_equals_processor_with_those_settings():
    im = pixels((123, 457, 3))
    ref = image_processor(q.QWEN3_VL_IMAGE)(images=[im], return_tensors="pt")
    pv, grid = q.image_inputs(im, q.QWEN3_VL_IMAGE)
    assert grid.tolist() == ref["image_grid_thw"].tolist() and grid.tolist()[0][0] == 1
    same(pv, ref["pixel_values"])


# (frames, height, width, source fps): odd and even counts, sizes off the 32 grid, a tiny one
# upscaled, a long one whose pixel budget shrinks the frames, few frames (fewer than min_frames)
@pytest.mark.parametrize("thwf", [(9, 50, 70, 6.0), (30, 200, 333, 6.0), (7, 10, 12, 4.0),
                                  (3, 64, 96, 1.0), (64, 240, 320, 8.0), (12, 90, 64, None)])
def test_video_sampled_by_fps_equals_processor(thwf):
    t, h, w, fps = thwf
    v = pixels((t, h, w, 3))
    meta = {"total_num_frames": t, "fps": fps}
    ref = video_processor(VIDEO)(videos=[v], video_metadata=[meta], return_metadata=True,
                                 return_tensors="pt")
    pv, grid, index = q.video_inputs(v, VIDEO, video_fps=fps)
    assert index == list(ref["video_metadata"][0].frames_indices)
    assert grid.tolist() == ref["video_grid_thw"].tolist()
    same(pv, ref["pixel_values_videos"])
    assert q.frame_timestamps(index, fps) == Qwen3VLProcessor._calculate_timestamps(
        None, index, ref["video_metadata"][0].fps, 2)


@pytest.mark.parametrize("n", [4, 5, 8])
def test_video_with_a_number_of_frames_equals_processor(n):
    v = pixels((20, 70, 100, 3), n)
    ref = video_processor(VIDEO)(videos=[v], num_frames=n, fps=None, return_metadata=True,
                                 video_metadata=[{"total_num_frames": 20, "fps": 10.0}],
                                 return_tensors="pt")
    pv, grid, index = q.video_inputs(v, VIDEO, video_fps=10.0, num_frames=n)
    assert index == list(ref["video_metadata"][0].frames_indices) and len(index) == n
    assert grid.tolist() == ref["video_grid_thw"].tolist() and grid[0, 0] == (n + 1) // 2
    same(pv, ref["pixel_values_videos"])


@pytest.mark.parametrize("t", [5, 6])
def test_unsampled_video_odd_and_even_frames_equals_processor(t):
    v = pixels((t, 77, 130, 3), t)
    ref = video_processor(VIDEO)(videos=[v], do_sample_frames=False, return_tensors="pt")
    pv, grid, index = q.video_inputs(v, VIDEO, sample=False)
    assert index == list(range(t))
    assert grid.tolist() == ref["video_grid_thw"].tolist()
    same(pv, ref["pixel_values_videos"])
    assert tuple(q.resized_video(v, VIDEO).shape) == (t, 3, grid[0, 1] * 16, grid[0, 2] * 16)


def test_video_pixel_cap_and_preset_equal_processor():
    capped = q.VisionPreprocess(min_pixels=4096, max_pixels=256 * 256 * 8, cap_pixels_per_frame=True,
                                max_video_tokens=16)
    v = pixels((10, 150, 210, 3), 7)
    for cfg in (capped, q.QWEN3_VL_VIDEO):
        ref = video_processor(cfg)(videos=[v], video_metadata=[{"total_num_frames": 10, "fps": 5.0}],
                                   return_tensors="pt")
        pv, grid, _ = q.video_inputs(v, cfg, video_fps=5.0)
        assert grid.tolist() == ref["video_grid_thw"].tolist()
        same(pv, ref["pixel_values_videos"])


def test_float_video_equals_processor_without_rescale():
    v = torch.from_numpy(pixels((6, 45, 61, 3), 9)).float() / 255
    ref = video_processor(VIDEO)(videos=[v.permute(0, 3, 1, 2)], do_sample_frames=False,
                                 do_rescale=False, return_tensors="pt")
    pv, grid, _ = q.video_inputs(v, VIDEO, sample=False)
    assert grid.tolist() == ref["video_grid_thw"].tolist()
    same(pv, ref["pixel_values_videos"])


def test_hf_config_dict():
    cfg = q.VisionPreprocess.from_hf({"size": {"shortest_edge": 4096, "longest_edge": 25165824},
                                      "patch_size": 16, "image_mean": [0.5, 0.5, 0.5], "fps": 2})
    assert cfg == q.QWEN3_VL_VIDEO
    with pytest.raises(UserError, match="shortest_edge"):
        q.VisionPreprocess.from_hf({"patch_size": 16})


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 32, 32, 3), np.int32), "uint8 or float"),
    (np.zeros((4, 32, 32, 4), np.uint8), r"\(T, H, W, 3\)"),
    (np.zeros((32, 32), np.uint8), r"\(T, H, W, 3\)"),
    (np.zeros((0, 32, 32, 3), np.uint8), "empty"),
    ([[1, 2, 3]], "numpy array or torch tensor"),
])
def test_bad_input_is_one_user_error_line(bad, match):
    for call in (lambda: q.video_inputs(bad, VIDEO), lambda: q.image_inputs(bad, IMAGE)):
        with pytest.raises(UserError, match=match) as e:
            call()
        assert "\n" not in str(e.value)


def test_too_few_frames_and_extreme_aspect_are_user_errors():
    with pytest.raises(UserError, match="at least 2 frames"):
        q.video_inputs(pixels((1, 40, 40, 3)), VIDEO)
    with pytest.raises(UserError, match="aspect ratio"):
        q.image_inputs(pixels((2, 500, 3)), IMAGE)
    with pytest.raises(UserError, match="no images"):
        q.image_inputs([], IMAGE)


def test_resized_frames_through_the_model_frame_path_equal_processor_pixels():
    """A datamodule hands the model frames in [0, 1]; the Qwen3-VL tower's own patchify (which
    normalises with VisionConfig.pixel_mean/std) then equals the processor's pixel_values up to
    float32 rounding of x / 255 (measured max abs diff 6e-8)."""
    from framelab.models.config import VisionConfig
    from framelab.models.vision import VisionEncoder
    tower = VisionEncoder(VisionConfig(flavour="qwen3_vl", patch_size=16, width=32, depth=1,
                                       heads=2, num_position_embeddings=16))
    v = pixels((7, 70, 100, 3), 11)
    ref = video_processor(VIDEO)(videos=[v], do_sample_frames=False, return_tensors="pt")
    patches, grid = tower.patchify(q.resized_video(v, VIDEO).float() / 255)
    assert [list(grid)] == ref["video_grid_thw"].tolist()
    assert (patches - ref["pixel_values_videos"]).abs().max().item() <= 1e-6
