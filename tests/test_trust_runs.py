"""Nothing is lost and every user mistake is one line: `ckpt_path=last` picks the newest
checkpoint by its own record, sharded checkpoint folders count as checkpoints, a run resumed in
place keeps its metrics.csv, a run stopped by its data keeps its steps, and mistakes on the
command line end in one line naming what is wrong."""
import csv
import os
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from framelab import checkpoints
from framelab.callbacks.preemption import PreemptionCallback
from framelab.cli import main
from framelab.errors import DataStop, UserError
from framelab.loggers import CSVLogger

FIXTURES = Path(__file__).parent / "fixtures"


def fake_checkpoint(path: Path, step: int, saved_at: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "global_step": step, checkpoints.SAVED_AT_KEY: saved_at}, path)
    return path


def test_last_is_the_newest_by_recorded_time_not_by_folder_name(tmp_path):
    runs = tmp_path / "runs" / "debug"
    now = time.time()
    fake_checkpoint(runs / "M" / "checkpoints" / "last.ckpt", 100, now - 3600)      # older run
    newest = fake_checkpoint(runs / "2026-12-03_10-00-00" / "checkpoints" / "last.ckpt", 40, now)
    fake_checkpoint(runs / "slurm-9" / "checkpoints" / "last.ckpt", 70, now - 60)
    os.utime(runs / "M" / "checkpoints" / "last.ckpt")  # a copy touched later changes nothing
    assert checkpoints.resolve_ckpt_path("last", runs / "new") == str(newest)
    # the run directory itself comes first: resuming in place
    here = fake_checkpoint(runs / "slurm-9" / "checkpoints" / "last.ckpt", 71, now - 50)
    assert checkpoints.resolve_ckpt_path("last", runs / "slurm-9") == str(here)


def write_sharded(folder: Path) -> None:
    """A checkpoint folder as torch's distributed checkpoint API writes it (one gloo rank)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(29500 + os.getpid() % 1000)
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        dcp.save({"model": torch.nn.Linear(4, 3).state_dict(), "global_step": 5,
                  "loops": {"epoch": 1}}, checkpoint_id=str(folder))
    finally:
        dist.destroy_process_group()


def test_a_sharded_checkpoint_folder_is_found_checked_and_refused_when_broken(tmp_path):
    run = tmp_path / "runs" / "x" / "A"
    last = run / "checkpoints" / "last.ckpt"
    write_sharded(last)
    assert checkpoints.resolve_ckpt_path("last", tmp_path / "runs" / "x" / "B") == str(last)
    assert checkpoints.resolve_ckpt_path(str(last), run) == str(last)
    shard = next(last.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:20])
    with pytest.raises(UserError, match="shorter than its index says"):
        checkpoints.resolve_ckpt_path(str(last), run)
    (last / ".metadata").write_bytes(b"\x80\x04cbuiltins\nopen\n.")
    with pytest.raises(UserError, match="could run code"):
        checkpoints.resolve_ckpt_path(str(last), run)


def metric_steps(path: Path) -> list[int]:
    with open(path) as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_csv_logger_resumed_in_place_keeps_the_earlier_rows(tmp_path):
    first = CSVLogger(tmp_path, name="", version="")
    for step in range(10):
        first.log_metrics({"train/loss": 1.0 / (step + 1)}, step)
    first.save()
    # killed after step 9; the last checkpoint was at step 6: steps 6.. are replayed
    resumed = CSVLogger(tmp_path, name="", version="")
    for step in range(6, 12):
        resumed.log_metrics({"train/loss": 0.5, "val/acc": 0.25}, step)
    resumed.save()
    path = tmp_path / "metrics.csv"
    assert metric_steps(path) == list(range(12))
    # a fresh run in the same folder starts at step 0 and replaces the rows, as before
    fresh = CSVLogger(tmp_path, name="", version="")
    fresh.log_metrics({"train/loss": 2.0}, 0)
    fresh.save()
    assert metric_steps(path) == [0]


class Stopping(L.LightningModule):
    """Trains on batches of ones; its data raises DataStop when batch `stop_at` is fetched."""

    def __init__(self, stop_at: int):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.stop_at = stop_at

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        stop_at = self.stop_at

        def batches():
            for i in range(100):
                if i == stop_at:
                    raise DataStop("data: 9 of 64 samples skipped")
                yield torch.ones(4, 2)
        return batches()


def test_a_run_stopped_by_its_data_keeps_its_steps(tmp_path):
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True,
                                               every_n_train_steps=1000)
    trainer = L.Trainer(max_steps=50, callbacks=[ckpt, PreemptionCallback()], logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, accelerator="cpu")
    with pytest.raises(DataStop):
        trainer.fit(Stopping(stop_at=5))
    assert trainer.global_step == 4
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    # batch 5 raises while Lightning prefetches it, before batch 4 trains: steps 0-3 are kept
    assert saved["global_step"] == 4 and saved["state_dict"]["layer.weight"].shape == (1, 2)


def one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if line.startswith("framelab")]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("args, message", [
    (["trainer=gpu", "trainer.max_steps=1"], "no usable CUDA GPU; use trainer=cpu"),
    (["hydra.run.dir=RUN/file.txt/run"], "hydra.run.dir: cannot write in"),
    (["paths.cache_dir=RUN/file.txt/cache"], "paths.cache_dir (FRAMELAB_CACHE, generated data): "
                                              "cannot write in"),
])
def test_unusable_outputs_and_missing_gpu_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    if "gpu" in args[0] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("a file where a folder is needed")
    args = [a.replace("RUN", str(tmp_path)) for a in args]
    assert main(["fit", "experiment=debug", "logger=none", *args]) == 2
    assert message in one_line(capsys)


def test_a_checkpoint_of_another_module_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "experiment=debug", "logger=none",
                 f"ckpt_path={FIXTURES / 'sar-v0.ckpt'}"]) == 2
    assert "was written by SARGenModule, but this run is a CausalLMModule" in one_line(capsys)


def test_a_checkpoint_of_another_model_size_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "experiment=debug", "logger=none", "trainer.max_steps=2",
                 "hydra.run.dir=small"]) == 0
    capsys.readouterr()
    assert main(["validate", "experiment=debug", "logger=none", "model.hidden=48",
                 "trainer.limit_val_batches=1", "ckpt_path=small/checkpoints/last.ckpt"]) == 2
    assert "its model does not fit this run's" in one_line(capsys)


def test_a_required_data_folder_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "experiment=videollm_real", "trainer.max_steps=1", "logger=none"]) == 2
    assert "data.data_dir is not set" in one_line(capsys)


def test_validating_untrained_weights_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "experiment=debug", "logger=none",
                 "trainer.limit_val_batches=1"]) == 0
    assert "validate without ckpt_path: the weights are untrained" in capsys.readouterr().out


def test_convert_errors_are_one_line(tmp_path, capsys):
    good = str(FIXTURES / "videollm-v0.ckpt")
    truncated = tmp_path / "t.ckpt"
    truncated.write_bytes(Path(good).read_bytes()[:1000])
    for ckpt, out, message in [
            (str(truncated), "o.ckpt", "cannot be read as a torch file"),
            (str(tmp_path / "none.ckpt"), "o.ckpt", "--ckpt="),
            (good, str(tmp_path / "t.ckpt" / "o.ckpt"), "--out"),
    ]:
        assert main(["convert", "mla", "--ckpt", ckpt, "--rank", "8", "--rope-dims", "2",
                     "--out", str(tmp_path / out)]) == 2
        line = one_line(capsys)
        assert message in line and "init_from" not in line, line
