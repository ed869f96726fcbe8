"""What every video-LLM method module shares: the world model's spec from the datamodule, and
evaluation, prediction and prompts through `framelab.evaluation.VideoQAEvaluator`.

`VideoQASteps` is mixed into a `FramelabModule` that sets `self.evaluator` (a `VideoQAEvaluator`),
`self.tokens` (token ids by name: VIDEO_PAD, PAD, IM_END at least) and provides
`loss_and_hidden(batch) -> (loss, n_tokens, hidden)`. It gives:

- `on_datamodule`: keeps the datamodule's tokenizer (decoding, privileged prompts);
- `prompt_documents`, `decode_text`, `stop_tokens`, `pad_id`: what the policy stages
  (`framelab.lightning_modules.policy`) ask of a module;
- `validation_step` / `test_step` / `predict_step` and the epoch-end metrics: `<split>/loss`,
  the evaluator's per-task metrics (`val/mcq_acc/<task>` and the rest) and a few question/answer
  samples as TensorBoard text.

`world_model_spec(model_cfg, dm, init_spec, names)` is the spec of a framelab-flavour
`MultimodalLM` for a video-text datamodule: the data's vocabulary and patch size, M²LA shape keys
and vision-tower keys (`model.vision.*`, e.g. the stem) left null taken from the `init_from`
checkpoint -- so a run started from the default run's checkpoint builds the tower it trained --
and the token ids `names`.
"""
from __future__ import annotations

from framelab.datamodules.special_tokens import IM_END, PAD
from framelab.errors import UserError
from framelab.evaluation.video_qa import ANSWERED
from framelab.lightning_modules.base import build_model_config

SHAPE_KEYS = ("kv_lora_rank", "qk_rope_dim")


def world_model_spec(model_cfg: dict, dm, init_spec: dict | None, names: tuple[str, ...],
                     module: str = "this module") -> dict:
    """The spec {"config", "tokens"} of a framelab-flavour MultimodalLM (see the docstring)."""
    if dm is None or not hasattr(dm, "special_ids"):
        raise UserError(f"{module} needs a video-text datamodule (data=video_world, "
                        "world_mixture, video_needle, video_future, video_cue or video_real)")
    cfg = dict(model_cfg)
    cfg["vocab_size"] = cfg.get("vocab_size") or dm.vocab_size
    vision, patch = dict(cfg.get("vision") or {}), getattr(dm, "patch_size", None)
    if init_spec is not None:
        for key, value in (init_spec["config"].get("vision") or {}).items():
            if vision.get(key) is None:
                vision[key] = value
    if vision.get("patch_size") is None:
        vision["patch_size"] = patch           # the data's patch size fixes the token count
    cfg["vision"] = vision
    for key in SHAPE_KEYS:
        if cfg.get(key) is None and init_spec is not None:
            cfg[key] = init_spec["config"].get(key)
    config = build_model_config(cfg)
    v = config.vision
    if patch is not None and v.patch_size * v.merge != 2 * patch:
        # the data counts one placeholder per 2p x 2p pixels; the tower merges merge x merge
        raise UserError(f"model.vision.patch_size={v.patch_size} x merge={v.merge} covers "
                        f"{v.patch_size * v.merge} px per vision token but data.patch_size="
                        f"{patch} counts one per {2 * patch} px; leave model.vision.patch_size "
                        "null or make them agree")
    return {"config": config.to_dict(), "tokens": {k: dm.special_ids[k] for k in names}}


class VideoQASteps:
    """Mixin (see the module docstring)."""

    def on_datamodule(self, dm) -> None:
        if dm is not None and getattr(dm, "tokenizer", None) is None and hasattr(dm, "setup"):
            dm.setup("fit")
        if dm is not None:
            self.tokenizer = getattr(dm, "tokenizer", None)
            if self.evaluator is not None:
                self.evaluator.tokenizer = self.tokenizer

    # ---- what the policy stages ask of a module ---------------------------------------------
    def prompt_documents(self, batch) -> list[dict]:
        """The batch's questions with a ground truth to reward (multiple choice, open, "when")."""
        return [d for d in self.evaluator.documents(batch) if d["meta"].get("format") in ANSWERED]

    def decode_text(self, ids: list[int]) -> str:
        return self.evaluator.decode(ids)

    def stop_tokens(self) -> list[int]:
        return [self.tokens[IM_END]]

    def pad_id(self) -> int:
        return self.tokens[PAD]

    # ---- evaluation --------------------------------------------------------------------------
    def evaluate(self, batch, batch_idx: int, split: str):
        loss, _, hidden = self.loss_and_hidden(batch)
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=1)
        docs, replies = self.evaluator.evaluate(self.model, batch, hidden, split)
        logger = self.logger
        if batch_idx == 0 and docs and logger is not None and hasattr(logger.experiment, "add_text"):
            logger.experiment.add_text(f"{split}/samples", self.evaluator.samples_text(docs, replies),
                                       self.global_step)
        return loss

    def log_metrics(self) -> None:
        for name, value in self.evaluator.compute().items():
            self.log(name, value, sync_dist=False)

    def validation_step(self, batch, batch_idx):
        return self.evaluate(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        return self.evaluate(batch, batch_idx, "test")

    def on_validation_epoch_end(self):
        self.log_metrics()

    def on_test_epoch_end(self):
        self.log_metrics()

    def predict_step(self, batch, batch_idx):
        return self.evaluator.predictions(self.model, batch)
