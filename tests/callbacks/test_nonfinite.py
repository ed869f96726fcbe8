"""Non-finite guard: bad steps leave the weights alone, are counted, and stop the run in time."""
import lightning as L
import torch

from framelab.callbacks.nonfinite import NonFiniteGuard
from framelab.datamodules.synthetic_tokens import SyntheticTokenDataModule
from framelab.lightning_modules.causal_lm import CausalLMModule


class Poisoned(CausalLMModule):
    """Returns a NaN loss on the chosen steps."""

    def __init__(self, bad_steps, **kw):
        super().__init__(**kw)
        self.bad_steps = set(bad_steps)
        self.weights_at: dict[int, torch.Tensor] = {}

    def compute_loss(self, batch):
        self.weights_at[self.global_step] = self.model.embed_tokens.weight.detach().clone()
        loss, n = super().compute_loss(batch)
        return (loss * float("nan") if self.global_step in self.bad_steps else loss), n


def fit(tmp_path, bad_steps, max_steps=8, max_consecutive=3):
    module = Poisoned(bad_steps, model={"preset": "tiny", "layers": 1},
                      scheduler={"total_steps": max_steps})
    guard = NonFiniteGuard(max_consecutive=max_consecutive)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        callbacks=[guard], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=SyntheticTokenDataModule(batch_size=4, train_size=64))
    return module, guard, trainer


def test_bad_steps_are_skipped_and_counted(tmp_path):
    module, guard, trainer = fit(tmp_path, bad_steps={2, 5})
    assert guard.skipped == 2 and trainer.global_step == 8
    w = module.weights_at
    assert torch.equal(w[2], w[3]) and torch.equal(w[5], w[6])   # skipped: no update
    assert not torch.equal(w[1], w[2]) and not torch.equal(w[3], w[4])
    assert all(torch.isfinite(t).all() for t in w.values())


def test_too_many_in_a_row_stop_with_the_weights_from_before(tmp_path, capsys):
    module, guard, trainer = fit(tmp_path, bad_steps={3, 4, 5, 6}, max_steps=20)
    assert trainer.global_step == 6  # stopped at the third bad step in a row (steps 3, 4, 5)
    assert "3 non-finite steps in a row, the first at step 3" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "checkpoints" / "nonfinite-step0000003.ckpt", weights_only=False)
    torch.testing.assert_close(ckpt["state_dict"]["model.embed_tokens.weight"], module.weights_at[3],
                               rtol=0, atol=0)
