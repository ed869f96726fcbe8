"""Plain nn.Modules (no Lightning): the shared backbone -- decoder LM, vision encoder, MultimodalLM,
KV cache, the one generation loop, HF import/export. SAR-only parts live in `framelab.models.sar`."""
from framelab.models.cache import KVCache
from framelab.models.config import PRESETS, ModelConfig, VisionConfig, preset
from framelab.models.generation import Generation, continue_generation, decode, generate
from framelab.models.hf import export_hf, load_hf
from framelab.models.multimodal import MultimodalLM
from framelab.models.transformer import DecoderLM, LMOutput

__all__ = ["DecoderLM", "Generation", "KVCache", "LMOutput", "ModelConfig", "MultimodalLM", "PRESETS",
           "VisionConfig", "continue_generation", "decode", "export_hf", "generate", "load_hf",
           "preset"]
