"""VideoLLMModule runs that start from a Qwen3-VL checkpoint (`init_from=hf:DIR`, or a framelab
checkpoint of a Qwen3-VL model: a run started from one, or `framelab convert mla`'s output).

The model is the checkpoint's architecture (its config.json, or the spec it stores): the `model`
config group does not apply (a Qwen3-VL model is not a preset plus overrides), which is logged.
The data must speak the checkpoint's language, each checked here with a one-line error:

- its tokenizer gives the special tokens the checkpoint's ids (`<|video_pad|>`, `<|image_pad|>`,
  `<|vision_start|>`, `<|vision_end|>`: Qwen3-VL's tokenizer.json, `data.tokenizer_path=hf:DIR`)
  and no more ids than the embedding has rows;
- videos are written as Qwen3-VL writes them, one `<t seconds><|vision_start|>...<|vision_end|>`
  block per temporal step (`data.video_layout=qwen3_vl`), since the tower's positions need it;
- its patch size counts the tower's vision tokens (`data.patch_size` = the tower's patch).

`data=qwen3_vl_real` sets all three.
"""
from __future__ import annotations

import logging

from framelab.checkpoints import HF_TOKENS
from framelab.datamodules.special_tokens import (IM_END, IMAGE_PAD, PAD, VIDEO_PAD, VISION_END,
                                                 VISION_START)
from framelab.errors import UserError
from framelab.models.config import ModelConfig
from framelab.models.multimodal import MultimodalLM

log = logging.getLogger("framelab")

TOKENS = (VIDEO_PAD, PAD, IM_END, IMAGE_PAD, VISION_START, VISION_END)


def is_qwen3_vl(config: dict) -> bool:
    """Whether a model config (a spec's dict) is a Qwen3-VL model (vision flavour qwen3_vl)."""
    return (config.get("vision") or {}).get("flavour") == "qwen3_vl"


def qwen3_vl_spec(dm, init_spec: dict, init_from: str, preset: str | None) -> dict:
    """The model spec of a run from a Qwen3-VL checkpoint: its architecture, the data's token ids
    (checked against the checkpoint's)."""
    config = ModelConfig.from_dict(dict(init_spec["config"]))
    log.warning("init_from=%s is a Qwen3-VL model: the run trains its architecture (%d layers, "
                "hidden %d, vocab %d; tower %d x %d); the model group (preset %s) is not used",
                init_from, config.layers, config.hidden, config.vocab_size, config.vision.depth,
                config.vision.width, preset)
    ids = dict(dm.special_ids)
    theirs = init_spec.get("tokens") or {}
    for name in (VIDEO_PAD, IMAGE_PAD, VISION_START, VISION_END):
        if name in theirs and int(theirs[name]) != ids[name]:
            raise UserError(f"init_from={init_from}: the checkpoint's {name} is id {theirs[name]} "
                            f"but the data's tokenizer gives it id {ids[name]}; use the "
                            "checkpoint's tokenizer: data.tokenizer_path=hf:DIR (data=qwen3_vl_real)")
    if dm.vocab_size > config.vocab_size:
        raise UserError(f"init_from={init_from}: the data's tokenizer has {dm.vocab_size} ids but "
                        f"the checkpoint embeds {config.vocab_size}; use the checkpoint's "
                        "tokenizer: data.tokenizer_path=hf:DIR (data=qwen3_vl_real)")
    layout = getattr(dm, "video_layout", "framelab")
    if layout != "qwen3_vl":
        raise UserError(f"init_from={init_from}: a Qwen3-VL model needs its prompt layout (one "
                        f"timestamped vision block per 2 frames) but data.video_layout={layout}; "
                        "set data.video_layout=qwen3_vl (data=qwen3_vl_real)")
    v = config.vision
    if v.temporal_patch != 2 or v.merge != 2:
        raise UserError(f"init_from={init_from}: the tower has temporal_patch={v.temporal_patch}, "
                        f"merge={v.merge}; framelab's datamodules count vision tokens for 2 and 2")
    patch = getattr(dm, "patch_size", None)
    if patch is not None and patch != v.patch_size:
        raise UserError(f"init_from={init_from}: the tower's patch is {v.patch_size} px but "
                        f"data.patch_size={patch}; set data.patch_size={v.patch_size} (and "
                        f"data.image_size a multiple of {2 * v.patch_size})")
    return {"config": config.to_dict(), "tokens": {k: int(ids[k]) for k in TOKENS}}


def qwen3_vl_model(config: ModelConfig, tokens: dict) -> MultimodalLM:
    """The MultimodalLM of a Qwen3-VL spec, carrying the special token ids `export_hf` writes."""
    model = MultimodalLM(config, tokens[VIDEO_PAD], tokens.get(IMAGE_PAD))
    model.hf_tokens = {key: int(tokens[name]) for key, name in HF_TOKENS.items() if name in tokens}
    return model
