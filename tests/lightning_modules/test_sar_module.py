"""SARGenModule + its callbacks on a tiny in-memory dataset: learning, checkpoint rebuild, exact EMA
resume, sample grids and predict PNGs."""
import lightning as L
import pytest
import torch

from framelab.callbacks.ema import EMA, ema_state
from framelab.callbacks.png_writer import PNGWriter
from framelab.callbacks.sample_images import SampleImages
from framelab.lightning_modules.sar import SARGenModule
from tests.lightning_modules.sar_helpers import TINY_MODEL, TinyGrids


pytestmark = pytest.mark.usefixtures("one_thread")


def make_module(**kw):
    torch.manual_seed(0)
    args = dict(model=dict(TINY_MODEL), partitions=["random-1..N-random", "raster-N-fixed"],
                val_partitions=["raster-N-fixed", "random-4-cosine"], label_dropout=0.1,
                sampling={"temperature": 1.0, "cfg_scale": 1.0},
                optim={"lr": 3e-3}, scheduler={"warmup_steps": 5, "total_steps": 60})
    args.update(kw)
    return SARGenModule(**args)


def trainer(tmp_path, steps, callbacks=(), **kw):
    return L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                     callbacks=list(callbacks), default_root_dir=tmp_path, num_sanity_val_steps=0,
                     limit_val_batches=2, check_val_every_n_epoch=None, **kw)


def test_learns_and_generates_the_right_class(tmp_path):
    dm, module = TinyGrids(), make_module()
    t = trainer(tmp_path, 60, val_check_interval=60)
    t.fit(module, datamodule=dm)
    assert module.model.cfg.grid == (4, 4) and module.model.cfg.codebook_size == 16
    assert t.callback_metrics["val/loss"] < 1.2          # uniform guessing: ln 16 = 2.77
    labels = torch.arange(4).repeat_interleave(8)
    for name in ("raster-N-fixed", "random-4-cosine", "random-2-random"):
        tokens = module.generate(labels, name, seed=0)
        nearest = (tokens[:, None] != dm.protos[None]).sum(-1).argmin(1)   # Hamming
        assert (nearest == labels).float().mean() > 0.9, name


def test_checkpoint_rebuilds_the_model_without_data(tmp_path):
    dm, module = TinyGrids(), make_module()
    t = trainer(tmp_path, 3, val_check_interval=3)
    t.fit(module, datamodule=dm)
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    again = SARGenModule.load_from_checkpoint(path, map_location="cpu")
    labels = torch.tensor([0, 1, 2, 3])
    assert torch.equal(again.generate(labels, "random-4-random", seed=3),
                       module.generate(labels, "random-4-random", seed=3))


def test_ema_update_rule():
    module = make_module(model=dict(TINY_MODEL, codebook_size=16, grid=[4, 4], num_classes=4))
    ema = EMA(decay=0.9, warmup=False)
    ema._ensure(module)
    before = module.model.head.weight.detach().clone()
    with torch.no_grad():
        module.model.head.weight.add_(1.0)

    class T:
        global_step = 1
    ema.on_train_batch_end(T(), module, None, None, 0)
    expected = 0.9 * before + 0.1 * (before + 1.0)
    assert torch.allclose(ema.shadow["model.head.weight"], expected)
    with ema.swapped(module):
        assert torch.allclose(module.model.head.weight, expected)
    assert torch.equal(module.model.head.weight, before + 1.0)


def test_ema_resumes_exactly(tmp_path):
    def run(steps, ckpt=None):
        ema, module = EMA(decay=0.9), make_module()
        t = trainer(tmp_path, steps, [ema], val_check_interval=1000)
        # one batch per epoch, so the resumed run sees the same batches (the data is not the test)
        t.fit(module, datamodule=TinyGrids(train_size=16), ckpt_path=ckpt)
        return t, ema, module

    full_t, full, full_module = run(10)
    half_t, _, _ = run(5)
    half_t.save_checkpoint(tmp_path / "half.ckpt")
    assert ema_state(torch.load(tmp_path / "half.ckpt", weights_only=False)) is not None
    _, resumed, resumed_module = run(10, tmp_path / "half.ckpt")
    assert torch.equal(full_module.model.head.weight, resumed_module.model.head.weight)
    assert resumed.updates == full.updates == 10
    for k, v in full.shadow.items():
        assert torch.equal(v, resumed.shadow[k]), k


def test_sample_grids_and_predict_pngs(tmp_path):
    dm = TinyGrids()
    module = make_module(predict={"classes": [1, 3], "per_class": 2, "steps": [2, 16],
                                  "order": "random", "interval": "fixed", "batch_size": 3})
    samples = SampleImages(every_n_steps=2, classes=[0, 1], per_class=3,
                           partitions=["raster-N-fixed", "random-4-cosine"])
    t = trainer(tmp_path, 2, [samples, EMA(decay=0.9)], val_check_interval=1000)
    t.fit(module, datamodule=dm)
    grid = samples.last_grids["random-4-cosine"]
    assert grid.shape == (3, 2 * 5 + 1, 3 * 5 + 1)           # 2 rows x 3 images of 4 px, 1 px gaps
    writer = PNGWriter(str(tmp_path / "png"), upscale=2)
    pt = trainer(tmp_path, 1, [writer])
    pt.predict(module, dataloaders=module.predict_dataloader(), return_predictions=False)
    # the requests path (module.predict_dataloader); decoding uses the datamodule kept from fit
    files = sorted(p.relative_to(tmp_path / "png").as_posix() for p in (tmp_path / "png").rglob("*.png"))
    assert files == sorted([f"random-{k}-fixed/class{c:02d}_{i:05d}.png"
                            for k, c, i in [(2, 1, 0), (2, 1, 1), (2, 3, 2), (2, 3, 3),
                                            (16, 1, 4), (16, 1, 5), (16, 3, 6), (16, 3, 7)]]
                           + ["random-2-fixed/grid.png", "random-16-fixed/grid.png"])
