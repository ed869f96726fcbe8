"""Hugging Face Qwen3 text checkpoints <-> framelab `DecoderLM`.

`load_hf(path)` reads a local checkpoint directory (config.json + model.safetensors, or shards
listed in model.safetensors.index.json) and returns a ready `DecoderLM`. `export_hf(model, path)`
writes the same format, loadable by `transformers.Qwen3ForCausalLM.from_pretrained`.
Parameter names match once the `model.` prefix is dropped (see `framelab.models.transformer`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from framelab.errors import UserError
from framelab.models.config import ModelConfig
from framelab.models.transformer import DecoderLM


def config_from_hf(hf: dict) -> ModelConfig:
    if hf.get("model_type") not in ("qwen3", None):
        raise UserError(f"config.json has model_type={hf.get('model_type')!r}; load_hf reads "
                        "Qwen3 text checkpoints (model_type 'qwen3')")
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
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        f = path / name
        if not f.exists():
            raise UserError(f"{f} is missing; a Qwen3 checkpoint directory holds config.json and "
                            "model.safetensors (or the shards its index lists)")
        try:
            tensors.update(load_file(str(f)))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds
            raise UserError(f"{f} cannot be read as safetensors ({exc})") from exc
    return tensors


def load_hf(path, dtype: torch.dtype = torch.float32, device="cpu") -> DecoderLM:
    """Load a local Qwen3 text checkpoint directory into a `DecoderLM`."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise UserError(f"{cfg_file} does not exist; pass a local Qwen3 checkpoint directory")
    cfg = config_from_hf(json.loads(cfg_file.read_text()))
    tensors = _read_tensors(path)
    state = {}
    for name, tensor in tensors.items():
        key = name[len("model."):] if name.startswith("model.") else name
        if key == "lm_head.weight" and cfg.tie_embeddings:
            continue
        state[key] = tensor
    with torch.device("meta"):
        model = DecoderLM(cfg)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise UserError(f"{path}: checkpoint does not match its config.json "
                        f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
    model.load_state_dict(state, assign=True)
    model.rotary = type(model.rotary)(cfg.head_dim, cfg.rope_theta, cfg.mrope_section)
    return model.to(device=device, dtype=dtype).eval()


def export_hf(model: DecoderLM, path) -> Path:
    """Write `model` as a Qwen3 checkpoint directory (config.json + model.safetensors)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in model.state_dict().items():
        name = key if key.startswith("lm_head.") else f"model.{key}"
        state[name] = tensor.detach().contiguous().cpu()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config_to_hf(model.config), indent=2))
    return path
