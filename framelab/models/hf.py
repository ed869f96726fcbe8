"""Hugging Face checkpoints <-> framelab models: Qwen3 text <-> `DecoderLM`, Qwen3-VL <->
`MultimodalLM` (vision flavour "qwen3_vl").

`load_hf(path)` reads a local checkpoint directory (config.json + model.safetensors, or shards
listed in model.safetensors.index.json; safetensors only, never pickle) and returns a ready model,
chosen by config.json's model_type ("qwen3" or "qwen3_vl"). `export_hf(model, path)` writes the
same format, loadable by `transformers.Qwen3ForCausalLM` / `Qwen3VLForConditionalGeneration`
`.from_pretrained`. Qwen3 names match once the `model.` prefix is dropped (see
`framelab.models.transformer`); the Qwen3-VL mapping is `framelab.models.hf_qwen3_vl`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from framelab.errors import UserError
from framelab.models import hf_qwen3_vl
from framelab.models.config import ModelConfig
from framelab.models.multimodal import MultimodalLM
from framelab.models.transformer import DecoderLM


def config_from_hf(hf: dict) -> ModelConfig:
    if hf.get("model_type") not in ("qwen3", None):
        raise UserError(f"config.json has model_type={hf.get('model_type')!r}; load_hf reads "
                        "Qwen3 text checkpoints (model_type 'qwen3') and Qwen3-VL checkpoints "
                        "(model_type 'qwen3_vl')")
    if hf.get("attention_bias"):
        raise UserError("config.json has attention_bias=true; Qwen3 checkpoints have no "
                        "attention biases and framelab's backbone does not model them")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise UserError(f"rope scaling {rope} is not supported; only the default rotary")
    theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    heads = hf["num_attention_heads"]
    return ModelConfig(
        vocab_size=hf["vocab_size"], hidden=hf["hidden_size"], layers=hf["num_hidden_layers"],
        heads=heads, kv_heads=hf.get("num_key_value_heads", heads),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        intermediate=hf["intermediate_size"], rope_theta=float(theta),
        norm_eps=hf.get("rms_norm_eps", 1e-6), tie_embeddings=hf.get("tie_word_embeddings", False),
        max_position=hf.get("max_position_embeddings", 40960))


def config_to_hf(cfg: ModelConfig) -> dict:
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden,
        "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
        "intermediate_size": cfg.intermediate, "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": cfg.max_position, "attention_bias": False,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "torch_dtype": "float32", "dtype": "float32",
    }


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as exc:
            raise UserError(f"{index} is not a safetensors index (a JSON object with a "
                            f"weight_map of tensor name -> shard file): {exc}") from None
    else:
        files = ["model.safetensors"]
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        f = path / name
        if not f.exists():
            raise UserError(f"{f} is missing; a checkpoint directory holds config.json and "
                            "model.safetensors (or the shards its index lists)")
        try:
            tensors.update(load_file(str(f)))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds
            raise UserError(f"{f} cannot be read as safetensors ({exc}); the file is truncated "
                            "or not a safetensors file - download it again") from None
    return tensors


def _read_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise UserError(f"{cfg_file} does not exist; pass a local Qwen3 or Qwen3-VL checkpoint "
                        "directory (config.json + model.safetensors)")
    try:
        hf = json.loads(cfg_file.read_text())
    except ValueError as exc:
        raise UserError(f"{cfg_file} is not valid JSON ({exc})") from None
    if not isinstance(hf, dict):
        raise UserError(f"{cfg_file} must hold a JSON object")
    return hf


def _assign(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Load `state` into a meta-device `model`, or one UserError naming what does not match."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(f"{path}: checkpoint does not match its config.json "
                        f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise UserError(f"{path}: tensor {key} has shape {list(tensor.shape)} but config.json "
                            f"implies {list(expected[key].shape)}")
    model.load_state_dict(state, assign=True)


def read_hf(path) -> tuple[ModelConfig, dict, dict[str, torch.Tensor]]:
    """(config, special token ids, weights under framelab's parameter names) of a local Qwen3-VL
    (a `MultimodalLM`'s names) or Qwen3 text (a `DecoderLM`'s; no token ids) checkpoint directory,
    without building a model. `config.vision` says which."""
    path = Path(path)
    hf = _read_config(path)
    if hf.get("model_type") == "qwen3_vl":
        cfg, tokens = hf_qwen3_vl.config_from_hf(hf, str(path / "config.json"))
        return cfg, tokens, hf_qwen3_vl.state_to_framelab(_read_tensors(path), cfg, str(path))
    cfg = config_from_hf(hf)
    state = {}
    for name, tensor in _read_tensors(path).items():
        key = name[len("model."):] if name.startswith("model.") else name
        if key == "lm_head.weight" and cfg.tie_embeddings:
            continue
        state[key] = tensor
    return cfg, {}, state


def load_hf(path, dtype: torch.dtype = torch.float32,
            device="cpu") -> DecoderLM | MultimodalLM:
    """Load a local Qwen3 text checkpoint directory into a `DecoderLM`, or a Qwen3-VL one into a
    `MultimodalLM` (vision flavour "qwen3_vl"; its `hf_tokens` holds the special token ids)."""
    path = Path(path)
    cfg, tokens, state = read_hf(path)
    if cfg.vision is not None:
        with torch.device("meta"):
            model = MultimodalLM(cfg, tokens["video_token_id"], tokens["image_token_id"])
        _assign(model, state, path)
        model.lm.rotary = type(model.lm.rotary)(cfg.head_dim, cfg.rope_theta, cfg.mrope_section,
                                                cfg.mrope_interleaved)
        model.vision.reset_buffers()
        model.hf_tokens = tokens
        return model.to(device=device, dtype=dtype).eval()
    with torch.device("meta"):
        model = DecoderLM(cfg)
    _assign(model, state, path)
    model.rotary = type(model.rotary)(cfg.head_dim, cfg.rope_theta, cfg.mrope_section)
    return model.to(device=device, dtype=dtype).eval()


def export_hf(model: DecoderLM | MultimodalLM, path) -> Path:
    """Write `model` as a Qwen3 (DecoderLM) or Qwen3-VL (MultimodalLM of vision flavour
    qwen3_vl) checkpoint directory: config.json + model.safetensors."""
    path = Path(path)
    if isinstance(model, MultimodalLM):
        if not model.qwen3_vl:
            raise UserError("export_hf writes Qwen3-VL checkpoints; this MultimodalLM has vision "
                            "flavour 'framelab', which no Hugging Face architecture loads")
        path.mkdir(parents=True, exist_ok=True)
        tokens = dict(getattr(model, "hf_tokens", {}))
        tokens["video_token_id"] = model.video_token_id
        if model.image_token_id is not None:
            tokens["image_token_id"] = model.image_token_id
        save_file(hf_qwen3_vl.state_to_hf(model), str(path / "model.safetensors"),
                  metadata={"format": "pt"})
        (path / "config.json").write_text(json.dumps(hf_qwen3_vl.config_to_hf(model.config,
                                                                                tokens), indent=2))
        return path
    path.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in model.state_dict().items():
        name = key if key.startswith("lm_head.") else f"model.{key}"
        state[name] = tensor.detach().contiguous().cpu()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config_to_hf(model.config), indent=2))
    return path
