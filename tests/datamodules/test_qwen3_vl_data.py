"""data.processor=qwen3_vl: a video goes through framelab's datamodule into the model's frame path
exactly as it goes through transformers' Qwen3-VL processor: the same frames sampled, resized to
the same size, the same pixel values after the tower's patchify, and the same prompt ids."""
import json

import numpy as np
import pytest
import torch

from framelab.datamodules.shards import ShardWriter, encode_frames
from framelab.datamodules.tokenizer import train_world_tokenizer
from framelab.datamodules.video_text import VideoTextDataModule
from framelab.errors import UserError
from framelab.models.config import VisionConfig
from framelab.models.vision import VisionEncoder

transformers = pytest.importorskip("transformers")

from transformers import PreTrainedTokenizerFast  # noqa: E402
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor  # noqa: E402
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor  # noqa: E402
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor  # noqa: E402

SIZE = {"shortest_edge": 4096, "longest_edge": 96 * 96 * 16}
CLIPS = {"wide": (23, 70, 100, 10.0), "tall": (41, 120, 64, 8.0)}   # frames, H, W, source fps
TEXT = ("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>\nWhat moves?<|im_end|>\n"
        "<|im_start|>assistant\nA red ball.<|im_end|>\n")


def clip(name):
    t, h, w, _ = CLIPS[name]
    return np.random.default_rng(len(name)).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3_vl_data")
    tokenizer = train_world_tokenizer(vocab_size=400, samples_per_task=4)
    ckpt = root / "ckpt"
    ckpt.mkdir()
    tokenizer.save(str(ckpt / "tokenizer.json"))
    (ckpt / "video_preprocessor_config.json").write_text(json.dumps({"size": SIZE, "patch_size": 16}))
    conv = [{"role": "user", "content": "<video>\nWhat moves?"},
            {"role": "assistant", "content": "A red ball."}]
    with ShardWriter(root / "shards" / "000000.tar") as writer:
        for name, (t, _, _, fps) in CLIPS.items():
            ann = {"conversations": conv, "num_frames": t, "fps": fps, "task": "real"}
            writer.write(name, {"json": json.dumps(ann).encode(), **encode_frames(clip(name), "npy")})
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2),
        tokenizer=PreTrainedTokenizerFast(tokenizer_object=tokenizer),
        video_processor=Qwen3VLVideoProcessor(size=SIZE, patch_size=16, merge_size=2))
    return root, ckpt, processor


def batches(root, ckpt, **kw):
    dm = VideoTextDataModule(data_dir=str(root / "shards"), cache_dir=str(root / "cache"),
                             tokenizer_path=f"hf:{ckpt}", patch_size=16, video_layout="qwen3_vl",
                             processor="qwen3_vl", shuffle=False,
                             **{"max_frames": 64, "pack": False, "batch_size": 1, **kw})
    dm.setup("fit")
    return [dm.on_after_batch_transfer(b, 0) for b in dm.train_dataloader()]  # frames to float, as on the device


def test_datamodule_equals_the_processor(setup):
    root, ckpt, processor = setup
    tower = VisionEncoder(VisionConfig(flavour="qwen3_vl", patch_size=16, width=32, depth=1,
                                       heads=2, num_position_embeddings=16))
    got = {b["sample_ids"][0]: b for b in batches(root, ckpt)}
    assert sorted(got) == sorted(CLIPS)
    for name, (t, h, w, fps) in CLIPS.items():
        ref = processor(text=[TEXT], videos=[clip(name)], return_tensors="pt",
                        video_metadata=[{"total_num_frames": t, "fps": fps}])
        batch = got[name]
        assert batch["input_ids"][0].tolist() == ref["input_ids"][0].tolist(), name
        patches, grid = tower.patchify(batch["videos"][0])
        assert [list(grid)] == ref["video_grid_thw"].tolist(), name
        assert (patches - ref["pixel_values_videos"]).abs().max().item() <= 1e-6, name


def test_frame_and_token_budgets_keep_the_processors_layout(setup):
    """Under max_frames the frames are evenly spaced as the processor's num_frames gives them;
    under a token budget the most frames that fit are kept."""
    root, ckpt, processor = setup
    t, h, w, fps = CLIPS["tall"]
    few = {b["sample_ids"][0]: b for b in batches(root, ckpt, max_frames=4)}["tall"]
    ref = processor(text=[TEXT], videos=[clip("tall")], num_frames=4, fps=None,
                    return_tensors="pt", video_metadata=[{"total_num_frames": t, "fps": fps}])
    assert few["input_ids"][0].tolist() == ref["input_ids"][0].tolist()
    assert few["videos"][0].shape[0] == 4
    full = {b["sample_ids"][0]: b for b in batches(root, ckpt)}["tall"]
    limit = full["input_ids"].shape[1] - 1
    cut = {b["sample_ids"][0]: b for b in batches(root, ckpt, pack=True, max_tokens=limit)}["tall"]
    assert cut["input_ids"].shape[1] <= limit
    assert 2 <= cut["videos"][0].shape[0] < full["videos"][0].shape[0]


def test_processor_settings_must_match_the_data(setup, tmp_path):
    root, ckpt, _ = setup
    with pytest.raises(UserError, match="data.processor='fast'"):
        VideoTextDataModule(processor="fast")
    bad = tmp_path / "ckpt"
    bad.mkdir()
    (bad / "tokenizer.json").write_text((ckpt / "tokenizer.json").read_text())
    (bad / "video_preprocessor_config.json").write_text(json.dumps({"size": SIZE, "patch_size": 14}))
    with pytest.raises(UserError, match="patch 14"):
        batches(root, bad)
    assert torch.is_tensor(batches(root, ckpt)[0]["videos"][0])
