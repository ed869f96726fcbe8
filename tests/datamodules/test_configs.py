"""configs/data/*.yaml instantiate through Hydra (every key is a constructor argument) and stream."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NAMES = ["video_world", "video_needle", "video_future", "video_cue", "video_real", "images"]


@pytest.mark.parametrize("name", NAMES)
def test_data_config_instantiates(name, tmp_path):
    overrides = ["experiment=debug", f"data={name}", f"paths.cache_dir={tmp_path}"]  # no data keys set
    if name == "video_real":
        overrides.append(f"data.data_dir={tmp_path}")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="fit", overrides=overrides)
    dm = instantiate(cfg.data)
    assert str(dm.cache_dir) == str(tmp_path)


def test_needle_config_streams_a_batch(tmp_path):
    overrides = ["data=video_needle", f"paths.cache_dir={tmp_path}", "data.samples.train=4",
                 "data.samples.val=0", "data.samples.test=0", "data.samples.ood=0",
                 "data.task_params.needle.lengths=[64]", "data.max_frames=8"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="fit", overrides=overrides)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["meta"][0]["task"] == "needle" and batch["videos"][0].shape[0] == 8
