"""Resume through a real Lightning checkpoint: the datamodule's position is saved by Lightning and
the resumed fit continues with exactly the next samples (with another worker count)."""
import lightning as L
import torch

from framelab.datamodules.video_text import VideoTextDataModule


class Recorder(L.LightningModule):
    """Records the sample ids of every training batch; learns nothing of interest."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["sample_ids"])
        assert "_position" not in batch
        return (self.w * batch["input_ids"].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(dm_kwargs, max_steps, root, ckpt_path=None, every=None):
    dm = VideoTextDataModule(**dm_kwargs)
    model = Recorder()
    callbacks = [L.pytorch.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=every,
                                                     save_top_k=-1)] if every else []
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=callbacks, enable_checkpointing=bool(every),
                        default_root_dir=root)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


def test_fit_resume_from_checkpoint_continues_exactly(tmp_path):
    kw = dict(tasks=["describe"], samples={"train": 24}, shards=2, cache_dir=str(tmp_path / "cache"),
              max_frames=4, max_tokens=150, seed=1)
    ref = fit(kw, 12, tmp_path / "ref")  # crosses into epoch 2
    first = fit(kw, 5, tmp_path / "run", every=5)
    ckpt = next((tmp_path / "run").glob("*step=5*.ckpt"))
    state = torch.load(ckpt, weights_only=False)["VideoTextDataModule"]
    assert state["consumed"] == sum(len(s) for s in first) and state["epoch"] == 0
    rest = fit({**kw, "num_workers": 2}, 12, tmp_path / "run2", ckpt_path=str(ckpt))
    assert first + rest == ref
