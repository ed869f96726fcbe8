"""The shared model lifecycle (FramelabModule): one checkpoint key for the model spec, checkpoints
written before it still load, `init_from` with only some parts, and one-line errors.

`tests/fixtures/*-v0.ckpt` were written by `trainer.save_checkpoint` before the lifecycle moved
into the base (their model specs sit under `videollm_model` / `sar_model`, the vision config in the
module's hyper-parameters); `reference-v0.pt` holds what those models computed then."""
from pathlib import Path

import lightning as L
import pytest
import torch

from framelab.checkpoints import MODEL_KEY, read_weights
from framelab.errors import UserError
from framelab.lightning_modules.sar import SARGenModule
from framelab.lightning_modules.videollm import VideoLLMModule
from framelab.models.sar import make_partition

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
REFERENCE = torch.load(FIXTURES / "reference-v0.pt", weights_only=True)
TOKENS = {"<|video_pad|>": 60, "<|endoftext|>": 0, "<|im_end|>": 2}
IDS = torch.tensor([[1, 60, 60, 7, 8, 9, 3, 2]])


class Data:
    vocab_size, special_ids, patch_size, tokenizer = 64, TOKENS, 8, None


def test_old_videollm_checkpoint_loads_and_computes_the_same_logits():
    m = VideoLLMModule.load_from_checkpoint(FIXTURES / "videollm-v0.ckpt", map_location="cpu")
    assert m.model.config.vision.pixel_mean == (0.1, 0.1, 0.13)   # from the old `vision` key
    assert m.tokens == TOKENS
    m.eval()
    logits = m.model(IDS, [REFERENCE["video"]]).logits
    torch.testing.assert_close(logits, REFERENCE["videollm_logits"], rtol=1e-5, atol=1e-5)


def test_old_sar_checkpoint_loads_and_computes_the_same_hidden_states():
    m = SARGenModule.load_from_checkpoint(FIXTURES / "sar-v0.ckpt", map_location="cpu").eval()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (2, 16), generator=g)
    partition = make_partition("raster-N-fixed", 16, 2, g)
    hidden, _ = m.model(tokens, REFERENCE["sar_labels"], partition)
    torch.testing.assert_close(hidden, REFERENCE["sar_hidden"], rtol=1e-5, atol=1e-5)


def new_module(**kw):
    return VideoLLMModule(model={"preset": "tiny", "vocab_size": 64, "hidden": 32, "layers": 1,
                                 "heads": 2, "kv_heads": 1, "head_dim": 16, "intermediate": 64,
                                 "vision": {"width": 16, "depth": 1, "heads": 2}},
                          scheduler={"total_steps": 1}, evaluation={"generate": False}, **kw)


def setup_with_data(m):
    m.attach_datamodule(Data())
    m.setup("fit")
    return m


def test_one_checkpoint_key_holds_module_config_and_tokens(tmp_path):
    m = setup_with_data(new_module())
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    trainer.strategy.connect(m)
    path = tmp_path / "new.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert ckpt[MODEL_KEY]["module"] == "VideoLLMModule"
    assert ckpt[MODEL_KEY]["tokens"] == TOKENS
    assert ckpt[MODEL_KEY]["config"]["vision"]["patch_size"] == 8     # from the data
    assert not {"videollm_model", "sar_model"} & set(ckpt)
    again = VideoLLMModule.load_from_checkpoint(path, map_location="cpu")
    for (k, a), b in zip(m.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_init_from_some_parts_takes_only_those_weights():
    source = read_weights(FIXTURES / "videollm-v0.ckpt", "init_from")
    torch.manual_seed(1)
    m = setup_with_data(new_module(init_from=str(FIXTURES / "videollm-v0.ckpt"),
                                   init_parts=["vision", "projector"]))
    state = m.model.state_dict()
    for key, value in source["state_dict"].items():
        if key.startswith(("vision.", "projector.")):
            assert torch.equal(state[key], value), key
        else:
            assert not torch.equal(state[key], value), key      # the LM keeps its fresh init
    with pytest.raises(UserError, match="unknown parts"):
        new_module(init_parts=["encoder"])


def test_init_from_another_kind_of_module_is_one_line():
    m = new_module(init_from=str(FIXTURES / "sar-v0.ckpt"))
    with pytest.raises(UserError, match="SARGenModule checkpoint"):
        setup_with_data(m)
