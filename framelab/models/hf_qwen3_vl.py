"""Hugging Face Qwen3-VL checkpoints <-> framelab `MultimodalLM` (vision flavour "qwen3_vl").

The config mapping (`config_from_hf` / `config_to_hf`) and the parameter-name mapping
(`to_framelab` / `to_hf`) between transformers' `Qwen3VLForConditionalGeneration` layout and
framelab's modules; `framelab.models.hf` reads and writes the files.

    model.language_model.*               <-> lm.*            (lm_head.weight <-> lm.lm_head.weight)
    model.visual.patch_embed.proj.*      <-> vision.patch_embed.*   (Conv3d kernel, flattened)
    model.visual.{pos_embed, blocks}.*   <-> vision.{pos_embed, blocks}.*
    model.visual.merger.{norm, linear_fc1, linear_fc2}  <-> projector.{norm, fc1, fc2}
    model.visual.deepstack_merger_list.i.*              <-> deepstack.i.* (same renames)
"""
from __future__ import annotations

import torch

from framelab.errors import UserError
from framelab.models.config import ModelConfig, VisionConfig

# token ids of the released Qwen3-VL tokenizer, used when a config.json does not name them
DEFAULT_TOKENS = {"image_token_id": 151655, "video_token_id": 151656,
                  "vision_start_token_id": 151652, "vision_end_token_id": 151653}


def config_from_hf(hf: dict, where: str = "config.json") -> tuple[ModelConfig, dict]:
    """(ModelConfig, token ids) of a Qwen3-VL config.json (transformers 4.57 or 5.x layout)."""
    text, vision = hf.get("text_config") or {}, hf.get("vision_config") or {}
    if not text or not vision:
        raise UserError(f"{where}: a Qwen3-VL config.json needs text_config and vision_config")
    if text.get("attention_bias"):
        raise UserError(f"{where}: text_config.attention_bias=true; Qwen3-VL has no attention "
                        "biases and framelab's decoder does not model them")
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", "mrope", None):
        raise UserError(f"{where}: rope {rope} is not supported; only the default rotary with "
                        "mrope_section")
    act = vision.get("hidden_act", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise UserError(f"{where}: vision_config.hidden_act={act!r}; Qwen3-VL's tower uses "
                        "gelu_pytorch_tanh")
    vrope = vision.get("rope_parameters") or {}
    heads = text["num_attention_heads"]
    tie = hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    try:
        vcfg = VisionConfig(
            width=vision["hidden_size"], depth=vision["depth"], heads=vision["num_heads"],
            intermediate=vision["intermediate_size"], patch_size=vision.get("patch_size", 16),
            temporal_patch=vision.get("temporal_patch_size", 2),
            merge=vision.get("spatial_merge_size", 2), channels=vision.get("in_channels", 3),
            rope_theta=float(vrope.get("rope_theta", vision.get("rope_theta", 10000.0))),
            flavour="qwen3_vl", num_position_embeddings=vision.get("num_position_embeddings", 2304),
            deepstack=tuple(vision.get("deepstack_visual_indexes", (8, 16, 24))))
        cfg = ModelConfig(
            vocab_size=text["vocab_size"], hidden=text["hidden_size"],
            layers=text["num_hidden_layers"], heads=heads,
            kv_heads=text.get("num_key_value_heads") or heads,
            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
            intermediate=text["intermediate_size"],
            rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 5_000_000.0))),
            norm_eps=text.get("rms_norm_eps", 1e-6), tie_embeddings=bool(tie),
            mrope_section=tuple(rope.get("mrope_section", (24, 20, 20))),
            mrope_interleaved=bool(rope.get("mrope_interleaved", True)),
            max_position=text.get("max_position_embeddings", 128000), vision=vcfg)
    except KeyError as exc:
        raise UserError(f"{where}: Qwen3-VL config lacks {exc.args[0]!r}") from None
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None
    if vcfg.width % vcfg.heads or (vcfg.width // vcfg.heads) % 4:
        raise UserError(f"{where}: vision hidden_size {vcfg.width} / num_heads {vcfg.heads} must "
                        "give a head width divisible by 4 (2D rotary)")
    tokens = {k: int(hf.get(k, v)) for k, v in DEFAULT_TOKENS.items()}
    return cfg, tokens


def config_to_hf(cfg: ModelConfig, tokens: dict | None = None) -> dict:
    """A config.json that transformers' `Qwen3VLForConditionalGeneration` loads."""
    v = cfg.vision
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta,
            "mrope_section": list(cfg.mrope_section), "mrope_interleaved": cfg.mrope_interleaved}
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
        **DEFAULT_TOKENS, **(tokens or {}),
        "tie_word_embeddings": cfg.tie_embeddings, "dtype": "float32",
        "text_config": {
            "model_type": "qwen3_vl_text", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden, "num_hidden_layers": cfg.layers,
            "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads,
            "head_dim": cfg.head_dim, "intermediate_size": cfg.intermediate,
            "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps, "attention_bias": False,
            "max_position_embeddings": cfg.max_position, "rope_parameters": rope,
            "tie_word_embeddings": cfg.tie_embeddings,
        },
        "vision_config": {
            "model_type": "qwen3_vl_vision", "depth": v.depth, "hidden_size": v.width,
            "hidden_act": "gelu_pytorch_tanh", "intermediate_size": v.mlp_width,
            "num_heads": v.heads, "in_channels": v.channels, "patch_size": v.patch_size,
            "spatial_merge_size": v.merge, "temporal_patch_size": v.temporal_patch,
            "out_hidden_size": cfg.hidden, "num_position_embeddings": v.num_position_embeddings,
            "deepstack_visual_indexes": list(v.deepstack),
            "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
        },
    }


_MERGER = {"linear_fc1": "fc1", "linear_fc2": "fc2", "norm": "norm"}


def to_framelab(name: str) -> str | None:
    """framelab parameter name of a checkpoint tensor name; None for names it does not know."""
    for prefix in ("model.language_model.", "language_model.model.", "language_model."):
        if name.startswith(prefix):
            return "lm." + name[len(prefix):]
    if name == "lm_head.weight":
        return "lm.lm_head.weight"
    for prefix in ("model.visual.", "visual."):
        if name.startswith(prefix):
            rest = name[len(prefix):]
            break
    else:
        return None
    parts = rest.split(".")
    if parts[0] == "patch_embed" and len(parts) == 3 and parts[1] == "proj":
        return "vision.patch_embed." + parts[2]
    if parts[0] in ("pos_embed", "blocks"):
        return "vision." + rest
    if parts[0] == "merger" and len(parts) == 3 and parts[1] in _MERGER:
        return f"projector.{_MERGER[parts[1]]}.{parts[2]}"
    if parts[0] == "deepstack_merger_list" and len(parts) == 4 and parts[2] in _MERGER:
        return f"deepstack.{parts[1]}.{_MERGER[parts[2]]}.{parts[3]}"
    return None


def to_hf(name: str) -> str:
    """Checkpoint name of a framelab `MultimodalLM` (qwen3_vl) parameter name."""
    back = {v: k for k, v in _MERGER.items()}
    if name == "lm.lm_head.weight":
        return "lm_head.weight"
    if name.startswith("lm."):
        return "model.language_model." + name[3:]
    if name.startswith("vision.patch_embed."):
        return "model.visual.patch_embed.proj." + name.split(".")[-1]
    if name.startswith("vision."):
        return "model.visual." + name[len("vision."):]
    parts = name.split(".")
    if parts[0] == "projector":
        return f"model.visual.merger.{back[parts[1]]}.{parts[2]}"
    if parts[0] == "deepstack":
        return f"model.visual.deepstack_merger_list.{parts[1]}.{back[parts[2]]}.{parts[3]}"
    raise KeyError(name)


def state_to_framelab(tensors: dict[str, torch.Tensor], cfg: ModelConfig,
                      where: str) -> dict[str, torch.Tensor]:
    """Rename a checkpoint's tensors to framelab's names (the patch Conv3d kernel flattened)."""
    state, unknown = {}, []
    for name, tensor in tensors.items():
        key = to_framelab(name)
        if key is None:
            unknown.append(name)
            continue
        if key == "lm.lm_head.weight" and cfg.tie_embeddings:
            continue
        if key == "vision.patch_embed.weight":
            tensor = tensor.reshape(tensor.shape[0], -1)
        state[key] = tensor
    if unknown:
        raise UserError(f"{where}: tensors a Qwen3-VL checkpoint does not have: {unknown[:4]}; "
                        "expected model.language_model.*, model.visual.* and lm_head.weight")
    return state


def state_to_hf(model) -> dict[str, torch.Tensor]:
    """A `MultimodalLM` (qwen3_vl)'s parameters under transformers' names and shapes."""
    v = model.config.vision
    out = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().contiguous().cpu()
        if key == "vision.patch_embed.weight":
            tensor = tensor.reshape(-1, v.channels, v.temporal_patch, v.patch_size, v.patch_size)
        out[to_hf(key)] = tensor.contiguous()
    return out
