"""Plain nn.Modules (no Lightning): the decoder LM, vision encoder, MultimodalLM, caches, generation."""
from framelab.models.cache import KVCache
from framelab.models.config import PRESETS, ModelConfig, VisionConfig, preset
from framelab.models.generation import generate
from framelab.models.hf import export_hf, load_hf
from framelab.models.multimodal import MultimodalLM
from framelab.models.transformer import DecoderLM, LMOutput

__all__ = ["DecoderLM", "KVCache", "LMOutput", "ModelConfig", "MultimodalLM", "PRESETS",
           "VisionConfig", "export_hf", "generate", "load_hf", "preset"]
