"""The Qwen3-VL path end to end, without downloads: a small random Qwen3-VL built and saved by
transformers (with a tokenizer.json beside it, as a released directory has) -> `framelab fit
experiment=videollm_real data=qwen3_vl_real init_from=hf:DIR` for a few steps (the CLI's own
code path) -> `framelab convert hf` -> transformers loads the export, and its logits equal
framelab's on a prompt framelab's datamodule writes (Qwen3-VL's timestamped layout), to 1e-4."""
import json
from pathlib import Path

import pytest
import torch

from framelab.checkpoints import read_weights
from framelab.cli import main
from framelab.convert import video_llm
from framelab.datamodules.chat import ChatEncoder
from framelab.datamodules.qwen3_vl_inputs import frame_timestamps
from framelab.datamodules.special_tokens import IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START
from framelab.datamodules.tokenizer import load_tokenizer, train_world_tokenizer

transformers = pytest.importorskip("transformers")


def _qwen3_vl_dir(path: Path, tokenizer) -> Path:
    """A random Qwen3-VL (patch 16, interleaved M-RoPE, DeepStack) whose special token ids are
    the tokenizer's, saved with the tokenizer.json."""
    ids = {name: tokenizer.token_to_id(name) for name in (IMAGE_PAD, VIDEO_PAD, VISION_START,
                                                          VISION_END)}
    config = transformers.Qwen3VLConfig(
        text_config=dict(vocab_size=tokenizer.get_vocab_size() + 16, hidden_size=64,
                         intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [2, 3, 3], "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2,
                           patch_size=16, out_hidden_size=64, num_position_embeddings=16,
                           deepstack_visual_indexes=[0]),
        image_token_id=ids[IMAGE_PAD], video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START], vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.Qwen3VLForConditionalGeneration(config).eval()
    with torch.no_grad():            # norms at 1 and biases at 0 would hide a wrong mapping
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path)
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "preprocessor_config.json").write_text(json.dumps({"patch_size": 16}))
    return path


@pytest.fixture(scope="module")
def qwen3_vl_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3_vl_fit")
    tokenizer = train_world_tokenizer(vocab_size=400, samples_per_task=4)
    src = _qwen3_vl_dir(root / "Qwen3-VL-tiny", tokenizer)
    for split in ("train", "val"):
        assert main(["data", "synth", "--task", "describe", "--out", str(root / "shards" / split),
                     "--split", split, "--samples", "8", "--shards", "1", "--no-progress"]) == 0
    run = root / "run"
    args = ["fit", "experiment=videollm_real", "data=qwen3_vl_real", f"init_from=hf:{src}",
            f"data.data_dir={root / 'shards'}", "data.image_size=64", "data.max_tokens=512",
            f"paths.cache_dir={root / 'cache'}", "callbacks.curriculum.phases=[{step: 0, max_frames: 4}]",
            "module.freeze.vision=true", "module.optim.lr=1e-3", "module.scheduler.warmup_steps=0",
            "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
            "logger=csv", f"hydra.run.dir={run}"]
    assert main(args) == 0
    metrics = (run / "metrics.csv").read_text()
    assert "val/loss" in metrics and "val/mcq_acc/describe" in metrics   # evaluator: step runs
    return root, src, run / "checkpoints" / "last.ckpt"


def test_fit_from_a_qwen3_vl_directory_trains_its_architecture(qwen3_vl_run):
    _, src, ckpt = qwen3_vl_run
    start = read_weights(f"hf:{src}", "init_from")
    after = read_weights(str(ckpt), "ckpt")
    assert after["spec"]["config"] == start["spec"]["config"]          # the checkpoint's shape
    assert after["spec"]["config"]["vision"]["flavour"] == "qwen3_vl"
    assert set(after["state_dict"]) == set(start["state_dict"])
    moved = [k for k in start["state_dict"]
             if not torch.equal(start["state_dict"][k], after["state_dict"][k])]
    assert any(k.startswith("lm.layers.") for k in moved)                # the LM trained
    assert any(k.startswith("projector.") for k in moved)
    assert not [k for k in moved if k.startswith("vision.")]            # module.freeze.vision


def test_export_loads_in_transformers_with_equal_logits(qwen3_vl_run):
    root, src, ckpt = qwen3_vl_run
    out = root / "export"
    assert main(["convert", "hf", "--ckpt", str(ckpt), "--out", str(out),
                 "--tokenizer", f"hf:{src}"]) == 0
    assert (out / "tokenizer.json").is_file() and (out / "preprocessor_config.json").is_file()
    ours, _, _ = video_llm(read_weights(str(ckpt), "ckpt"), str(ckpt))
    theirs = transformers.Qwen3VLForConditionalGeneration.from_pretrained(out).eval()
    # a prompt as the datamodule writes it: 6 frames of 64x64 -> 3 timestamped steps of 4 tokens
    encoder = ChatEncoder(load_tokenizer(f"hf:{src}"), video_layout="qwen3_vl")
    conv = [{"role": "user", "content": "<video>\nWhat moves?"},
            {"role": "assistant", "content": "A red ball."}]
    ids, _ = encoder.encode(conv, [0])
    ids, _ = encoder.fill_vision(ids, [0] * len(ids), [12], [frame_timestamps([0, 5, 10, 15, 20, 25],
                                                                             30.0)])
    ids = torch.tensor([ids])
    frames = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    patches, grid = ours.vision.patchify(frames)
    video = ids == ours.video_token_id
    assert int(video.sum()) == 12 and grid == (3, 4, 4)
    with torch.no_grad():
        got = ours(ids, videos=[frames]).logits
        ref = theirs(input_ids=ids, pixel_values_videos=patches,
                     video_grid_thw=torch.tensor([grid]), mm_token_type_ids=2 * video.int()).logits
    diff = float((got - ref).abs().max())
    assert diff < 1e-4, diff


def test_bad_directories_are_one_line_errors(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["convert", "mla", "--ckpt", f"hf:{missing}", "--rank", "8", "--rope-dims", "4",
                 "--out", str(tmp_path / "o.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a directory" in err and len(err.splitlines()) == 1
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text('{"model_type": "qwen3_vl", "text_config"')
    assert main(["convert", "mla", "--ckpt", f"hf:{corrupt}", "--rank", "8", "--rope-dims", "4",
                 "--out", str(tmp_path / "o.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not valid JSON" in err and len(err.splitlines()) == 1


def test_prompt_layout_is_the_qwen3_vl_processors(tmp_path):
    """The datamodule's video block equals what Qwen3-VL's processor puts in place of
    `<|vision_start|><|video_pad|><|vision_end|>` (timestamps, one block per 2 frames). The
    released checkpoints' processor (transformers 4.57) and transformers >= 5.25 replace the
    template's outer start/end with the blocks, and framelab follows them; transformers 5.0-5.24
    kept the outer pair around the blocks, which the test strips before comparing."""
    import numpy as np
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tokenizer = train_world_tokenizer(vocab_size=400, samples_per_task=4)
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2),
        tokenizer=PreTrainedTokenizerFast(tokenizer_object=tokenizer),
        video_processor=Qwen3VLVideoProcessor(size={"shortest_edge": 4096,
                                                    "longest_edge": 64 * 64 * 16},
                                              patch_size=16, merge_size=2, cap_pixels_per_frame=False))
    encoder = ChatEncoder(tokenizer, video_layout="qwen3_vl")
    conv = [{"role": "user", "content": "<video>\nWhat moves?"},
            {"role": "assistant", "content": "A red ball."}]
    for index, fps in (([0, 7, 14, 21, 28, 35], 30.0), ([3, 40, 80, 120], 24.0)):
        frames = np.random.default_rng(0).integers(0, 256, (len(index), 64, 96, 3), dtype=np.uint8)
        text = ("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>\nWhat moves?"
                "<|im_end|>\n<|im_start|>assistant\nA red ball.<|im_end|>\n")
        ref = processor(text=[text], videos=[frames], do_sample_frames=False,
                        video_metadata=[{"total_num_frames": 200, "fps": fps,
                                         "frames_indices": index}])
        t, h, w = (int(x) for x in ref["video_grid_thw"][0])
        ids, _ = encoder.encode(conv, [0])
        ids, _ = encoder.fill_vision(ids, [0] * len(ids), [t * h * w // 4],
                                     [frame_timestamps(index, fps)])
        want = list(ref["input_ids"][0])
        if want != ids:  # transformers 5.0-5.24 keep the template's outer start/end
            vs, ve = tokenizer.token_to_id(VISION_START), tokenizer.token_to_id(VISION_END)
            first, last = want.index(vs), len(want) - 1 - want[::-1].index(ve)
            want = want[:first] + want[first + 1:last] + want[last + 1:]
        assert want == ids


def test_mismatched_data_and_model_overrides_are_one_line_errors(tmp_path, capsys):
    from types import SimpleNamespace

    from framelab.errors import UserError
    from framelab.lightning_modules.qwen3_vl import qwen3_vl_spec
    from framelab.models.config import ModelConfig, VisionConfig

    assert main(["fit", "experiment=videollm_real", "data=qwen3_vl_real",
                 f"init_from=hf:{tmp_path}", "model.hidden=32"]) == 2
    err = capsys.readouterr().err.strip()
    assert "drop the model overrides" in err and len(err.splitlines()) == 1
    config = ModelConfig(vocab_size=500, vision=VisionConfig(
        width=32, heads=2, patch_size=16, flavour="qwen3_vl", num_position_embeddings=16))
    spec = {"config": config.to_dict(), "tokens": {VIDEO_PAD: 7}}
    ids = {name: i for i, name in enumerate(
        [VIDEO_PAD, IMAGE_PAD, VISION_START, VISION_END, "<|endoftext|>", "<|im_end|>"], 7)}

    def data(**kw):
        return SimpleNamespace(**{"special_ids": ids, "vocab_size": 400, "patch_size": 16,
                                  "video_layout": "qwen3_vl", **kw})
    assert qwen3_vl_spec(data(), spec, "hf:X", "small")["tokens"][VIDEO_PAD] == 7
    for bad, words in ((dict(video_layout="framelab"), "data.video_layout=qwen3_vl"),
                       (dict(patch_size=14), "data.patch_size=16"),
                       (dict(vocab_size=600), "600 ids"),
                       (dict(special_ids={**ids, VIDEO_PAD: 9}), "data.tokenizer_path=hf:DIR")):
        with pytest.raises(UserError, match=words):
            qwen3_vl_spec(data(**bad), spec, "hf:X", "small")
