"""No file framelab reads can run code: hostile checkpoints, sharded-checkpoint folders and run
folders are refused with one line, and the file their payload would write never appears.

The loaders, found by grepping the package for torch.load, pickle, instantiate, import_module,
np.load and yaml: `checkpoints.read_weights` (init_from, convert --ckpt, bench mla --ckpt),
`checkpoints.resolve_ckpt_path` (ckpt_path=FILE and ckpt_path=last, which searches run folders),
`safe_load.check_sharded` (sharded last.ckpt/ folders), `run_folder.load_datamodule` (convert
--calib-batches, bench sar --ckpt), `_sar_eval.load_run` (bench sar --ckpt), the feature
classifier's cached weights, and `PatchVQ.load` (data.vq_path).
"""
import builtins
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from framelab import checkpoints
from framelab.errors import UserError

PACKAGE = Path(__file__).resolve().parents[1] / "framelab"


class Payload:
    """Unpickling this calls open(marker, "w"): a stand-in for any command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"model.w": torch.zeros(2)}, "global_step": 3,
                "framelab_model": {"module": "VideoLLMModule", "config": {}, "tokens": {}},
                "hook": Payload(marker)}, path)
    return path


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PWNED"
    return hostile_checkpoint(tmp_path / "evil.ckpt", marker), marker


def one_line_refusal(exc_info, *words):
    text = str(exc_info.value)
    assert "\n" not in text and "could run code" in text, text
    for w in words:
        assert w in text, text


def test_no_loader_in_the_package_unpickles_freely():
    """Every torch.load passes weights_only=True, np.load never allows pickles, and the only
    pickle.Unpickler is the allowlisted one in safe_load.py."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert "allow_pickle=True" not in text and "weights_only=False" not in text, path
        if path.name != "safe_load.py":
            assert not re.search(r"pickle\.(load|Unpickler)", text), path
        # modules are imported by name only from the command line and the run's own config (a
        # reward named "pkg.module:function", as Hydra's _target_), never from a data or model file
        assert "import_module(" not in text or path.name in (
            "cli.py", "backends.py", "__init__.py", "rewards.py"), path


def test_init_from_convert_and_bench_refuse_a_hostile_checkpoint(evil, capsys):
    path, marker = evil
    with pytest.raises(UserError) as e:
        checkpoints.read_weights(path, "init_from")
    one_line_refusal(e, "init_from=", "evil.ckpt")
    from framelab.cli import main
    assert main(["convert", "mla", "--ckpt", str(path), "--rank", "8", "--rope-dims", "2",
                 "--out", str(path.parent / "out.ckpt")]) == 2
    assert main(["bench", "mla", "--ckpt", str(path), "--contexts", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("could run code" in line for line in err), err
    assert not marker.exists()


def test_ckpt_path_refuses_a_hostile_file_and_last_skips_one_planted_in_a_run(evil, tmp_path):
    path, marker = evil
    with pytest.raises(UserError) as e:
        checkpoints.resolve_ckpt_path(str(path), tmp_path / "runs" / "x" / "now")
    one_line_refusal(e, "ckpt_path=")
    planted = tmp_path / "runs" / "x" / "old" / "checkpoints"
    planted.mkdir(parents=True)
    hostile_checkpoint(planted / "last.ckpt", marker)
    with pytest.raises(UserError, match="ckpt_path=last: no complete"):
        checkpoints.resolve_ckpt_path("last", tmp_path / "runs" / "x" / "now")
    assert not marker.exists()


def test_bench_sar_refuses_a_hostile_checkpoint(evil):
    from framelab.benchmarks._sar_eval import load_run

    path, marker = evil
    run = path.parent / "run" / "checkpoints"
    run.mkdir(parents=True)
    os.replace(path, run / "last.ckpt")
    with pytest.raises(UserError) as e:
        load_run(run / "last.ckpt")
    one_line_refusal(e)
    assert not marker.exists()


def hostile_config(folder: Path, marker: Path, data: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(data.replace("MARKER", str(marker)))
    return folder / "config.yaml"


@pytest.mark.parametrize("data", [
    "data:\n  _target_: builtins.open\n  _args_: [MARKER, w]\n",
    "data:\n  _target_: framelab.datamodules.video_text.VideoTextDataModule\n"
    "  tasks: [describe]\n  tokenizer_path:\n    _target_: builtins.open\n    _args_: [MARKER, w]\n",
])
def test_a_run_folder_config_cannot_name_code(tmp_path, data):
    from framelab.convert import calibration_batches
    from framelab.run_folder import load_datamodule

    marker = tmp_path / "PWNED"
    config = hostile_config(tmp_path / "run", marker, data)
    with pytest.raises(UserError, match="may only build one of framelab's datamodules"):
        load_datamodule(config, "--ckpt")
    with pytest.raises(UserError, match="may only build one of framelab's datamodules"):
        calibration_batches(config, 1)
    assert not marker.exists()


def test_a_run_folder_config_of_a_framelab_datamodule_builds(tmp_path):
    from framelab.run_folder import load_datamodule

    config = hostile_config(tmp_path / "run", tmp_path / "unused", (
        "data:\n  _target_: framelab.datamodules.image_tokens.ImageTokenDataModule\n"
        f"  cache_dir: {tmp_path / 'cache'}\n  image_size: 32\n"))
    assert type(load_datamodule(config, "--ckpt")).__name__ == "ImageTokenDataModule"


def test_an_image_tokenizer_factory_is_refused(tmp_path):
    from framelab.datamodules.image_tokens import ImageTokenDataModule

    marker = tmp_path / "PWNED"
    with pytest.raises(UserError, match="no longer imports a callable"):
        ImageTokenDataModule(vq_path=str(marker), vq_factory="builtins:open", cache_dir=str(tmp_path))
    assert not marker.exists()


def test_an_image_tokenizer_file_with_pickled_objects_is_refused(tmp_path):
    from framelab.datamodules.vq import load_image_tokenizer

    path = tmp_path / "vq.npz"
    np.savez(path, codebook=np.array([Payload(tmp_path / "PWNED")], dtype=object), patch=4)
    with pytest.raises(UserError, match="cannot load image tokenizer"):
        load_image_tokenizer(str(path))
    assert not (tmp_path / "PWNED").exists()


def test_cached_feature_weights_are_read_weights_only(tmp_path):
    import hashlib
    import json

    from framelab.evaluation.features import load_or_train

    marker = tmp_path / "PWNED"
    key = hashlib.sha1(json.dumps({"size": 32}, sort_keys=True).encode()).hexdigest()[:8]
    torch.save({"w": Payload(marker)}, tmp_path / f"sar-features-32px-{key}.pt")
    with pytest.raises(UserError) as e:
        load_or_train(tmp_path, 32)
    one_line_refusal(e, "feature classifier cache")
    assert not marker.exists()
