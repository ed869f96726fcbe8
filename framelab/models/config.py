"""Model configuration dataclasses and the size presets (the one place they live).

`tiny` is for tests, `small` for CPU demos, `tiny-video` is the default video LLM of the world
experiments (its vision tower normalises pixels with the world's own statistics, which centre its
dark, uniform background near zero); the `qwen3-*` presets have the published shapes of the
Qwen3 dense models (configs of Qwen/Qwen3-0.6B, -1.7B, -8B); the `qwen3-vl-*` presets the shapes
of Qwen3-VL-2B, -4B and -8B (vision flavour "qwen3_vl", see docs/qwen3_vl.md).

Vision flavours (`VisionConfig.flavour`): "framelab" is the tower the world experiments train
(RMSNorm + SwiGLU blocks, optional conv stem, projector without a norm); "qwen3_vl" is exactly the
vision tower of transformers' `Qwen3VLForConditionalGeneration` (biased linear patch embedding,
learned position table bilinearly resampled to each grid, LayerNorm + GELU-tanh blocks with a
fused qkv, LayerNorm'd 2x2 merger, DeepStack mergers at `deepstack` layers).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass
class VisionConfig:
    """ViT over video frames: tubelets of `temporal_patch` frames × `patch_size`² pixels."""
    width: int = 64
    depth: int = 2
    heads: int = 2
    mlp_ratio: float = 4.0
    patch_size: int = 8
    temporal_patch: int = 2
    merge: int = 2           # projector merges merge × merge neighbouring patches into one token
    channels: int = 3
    rope_theta: float = 10000.0
    attn_scope: str = "frame"  # "frame": attention within each tubelet time step; "video": all
    stem: str = "linear"     # patch embedding: "linear" (ViT, Qwen-VL) | "conv" (two 3x3 convs
                             # within each patch first) | "cnn" (a small CNN over whole frames)
    norm_eps: float = 1e-6
    # per-channel pixel normalisation, (x - mean) / std on [0, 1] pixels (an image processor's
    # image_mean / image_std). 0.5 / 0.5 maps to [-1, 1]; the world experiments use the world's
    # own statistics, which centre its dark, uniform background near zero
    pixel_mean: tuple = (0.5, 0.5, 0.5)
    pixel_std: tuple = (0.5, 0.5, 0.5)
    flavour: str = "framelab"  # "framelab" | "qwen3_vl" (module docstring)
    # qwen3_vl only: MLP width (None: width * mlp_ratio), size of the learned position table (a
    # square, side sqrt(n)), and the tower layers whose outputs DeepStack adds to the first LM
    # layers
    intermediate: int | None = None
    num_position_embeddings: int = 2304
    deepstack: tuple = ()

    @property
    def mlp_width(self) -> int:
        if self.intermediate is not None:
            return self.intermediate
        return int(self.width * self.mlp_ratio)

    def __post_init__(self):
        self.pixel_mean, self.pixel_std = tuple(self.pixel_mean), tuple(self.pixel_std)
        self.deepstack = tuple(int(i) for i in self.deepstack)
        if self.flavour not in ("framelab", "qwen3_vl"):
            raise ValueError(f"vision flavour {self.flavour!r}: expected framelab or qwen3_vl")
        if self.flavour == "framelab" and self.deepstack:
            raise ValueError("vision deepstack layers need flavour qwen3_vl")
        if self.flavour == "qwen3_vl":
            side = int(round(self.num_position_embeddings ** 0.5))
            if side * side != self.num_position_embeddings:
                raise ValueError(f"vision num_position_embeddings={self.num_position_embeddings} "
                                 "must be a square (the learned position grid)")
            if self.stem != "linear" or self.attn_scope != "frame":
                raise ValueError("vision flavour qwen3_vl has stem=linear and attn_scope=frame")
            if any(not 0 <= i < self.depth for i in self.deepstack):
                raise ValueError(f"vision deepstack layers {list(self.deepstack)} must lie in "
                                 f"0..depth-1 ({self.depth - 1})")
        if len(self.pixel_mean) != self.channels or len(self.pixel_std) != self.channels or min(
                self.pixel_std) <= 0:
            raise ValueError(f"vision pixel_mean {list(self.pixel_mean)} / pixel_std "
                             f"{list(self.pixel_std)}: expected {self.channels} values each, std > 0")
        if self.stem not in ("linear", "conv", "cnn"):
            raise ValueError(f"vision stem {self.stem!r}: expected linear, conv or cnn")


@dataclass
class ModelConfig:
    """A Qwen3-family decoder-only LM (+ optional vision tower)."""
    vocab_size: int = 512
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    intermediate: int = 128
    rope_theta: float = 1_000_000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    qk_norm: bool = True
    # multimodal rotary: frequency pairs given to (t, h, w); must sum to head_dim // 2
    mrope_section: tuple[int, int, int] | None = None
    # False: each axis takes a contiguous block of frequency pairs (Qwen2-VL); True: pairs are
    # dealt t, h, w, t, h, w, ... while each axis has some left (Qwen3-VL's interleaved M-RoPE)
    mrope_interleaved: bool = False
    attention: str = "gqa"        # "gqa" (grouped-query) | "mla" (M²LA latent attention)
    # M²LA (attention="mla"); see framelab/models/attention.py. None = the default in brackets.
    kv_lora_rank: int | None = None   # latent width d_c cached per token [kv_heads * head_dim]
    qk_rope_dim: int | None = None    # rotary dims kept per kv group, even [head_dim // 2]
    max_position: int = 40960
    # std of the normal init of every linear/embedding weight; None: hidden ** -0.5. A fixed 0.02
    # (Qwen3's initializer_range, set on the qwen3-* presets) is ~1/sqrt(d) only at d ~ 2500: at
    # the tiny widths it shrinks every sublayer's output ~4x and training sits on a long plateau
    init_std: float | None = None
    # ViCuR's cue recovery (framelab/models/cue_recovery.py): a sink-token cross-attention block
    # after every decoder layer whose index is a multiple of this (the released value: 5); 0: none
    cue_recovery: int = 0
    vision: VisionConfig | None = None

    def __post_init__(self):
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if self.mrope_section is not None:
            self.mrope_section = tuple(int(s) for s in self.mrope_section)
        if self.heads % self.kv_heads:
            raise ValueError(f"model.heads ({self.heads}) must be a multiple of "
                             f"model.kv_heads ({self.kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"model.head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.mrope_section is None:
            half = self.head_dim // 2
            t = half // 4
            self.mrope_section = (half - 2 * ((half - t) // 2), (half - t) // 2, (half - t) // 2)
        if sum(self.mrope_section) != self.head_dim // 2:
            raise ValueError(f"model.mrope_section {list(self.mrope_section)} must sum to "
                             f"head_dim // 2 = {self.head_dim // 2}")
        if int(self.cue_recovery) < 0:
            raise ValueError(f"model.cue_recovery={self.cue_recovery}: expected a layer interval "
                             "(5 as released) or 0 for none")
        if self.attention not in ("gqa", "mla"):
            raise ValueError(f"model.attention={self.attention!r}; choose gqa or mla")
        if self.attention == "mla":
            if self.kv_lora_rank is None:
                self.kv_lora_rank = self.kv_heads * self.head_dim
            if self.qk_rope_dim is None:
                self.qk_rope_dim = self.head_dim // 2
            if self.qk_rope_dim % 2 or not 0 < self.qk_rope_dim <= self.head_dim:
                raise ValueError(f"model.qk_rope_dim={self.qk_rope_dim} must be even and in "
                                 f"2..head_dim ({self.head_dim})")
            if self.kv_lora_rank < 1:
                raise ValueError(f"model.kv_lora_rank={self.kv_lora_rank} must be >= 1")

    @property
    def weight_std(self) -> float:
        return self.init_std if self.init_std is not None else self.hidden ** -0.5

    @property
    def qk_nope_dim(self) -> int:
        """Per-head query/key dims without rotary (M²LA): head_dim - qk_rope_dim."""
        return self.head_dim - (self.qk_rope_dim or 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(),
    "tiny-video": ModelConfig(hidden=128, layers=4, heads=8, kv_heads=2, head_dim=16,
                              intermediate=384,
                              vision=VisionConfig(width=64, depth=2, heads=2, patch_size=8, stem="conv",
                                                  pixel_mean=(0.1, 0.1, 0.13),
                                                  pixel_std=(0.15, 0.15, 0.15))),
    "small": ModelConfig(vocab_size=4096, hidden=256, layers=4, heads=8, kv_heads=4, head_dim=32,
                         intermediate=768),
    "qwen3-0.6b": ModelConfig(vocab_size=151936, hidden=1024, layers=28, heads=16, kv_heads=8,
                              head_dim=128, intermediate=3072, tie_embeddings=True,
                              mrope_section=(24, 20, 20), init_std=0.02),
    "qwen3-1.7b": ModelConfig(vocab_size=151936, hidden=2048, layers=28, heads=16, kv_heads=8,
                              head_dim=128, intermediate=6144, tie_embeddings=True,
                              mrope_section=(24, 20, 20), init_std=0.02),
    "qwen3-8b": ModelConfig(vocab_size=151936, hidden=4096, layers=36, heads=32, kv_heads=8,
                            head_dim=128, intermediate=12288, tie_embeddings=False,
                            mrope_section=(24, 20, 20), init_std=0.02),
}


def _qwen3_vl(hidden, layers, heads, intermediate, tie, vision_width, vision_depth,
              vision_intermediate, deepstack) -> ModelConfig:
    return ModelConfig(vocab_size=151936, hidden=hidden, layers=layers, heads=heads, kv_heads=8,
                       head_dim=128, intermediate=intermediate, rope_theta=5_000_000.0,
                       tie_embeddings=tie, mrope_section=(24, 20, 20), mrope_interleaved=True,
                       max_position=262144, init_std=0.02,
                       vision=VisionConfig(width=vision_width, depth=vision_depth, heads=16,
                                           patch_size=16, temporal_patch=2, merge=2,
                                           flavour="qwen3_vl", intermediate=vision_intermediate,
                                           num_position_embeddings=2304, deepstack=deepstack))


# Shapes of the Qwen3-VL Instruct checkpoints' config.json (Qwen/Qwen3-VL-2B/4B/8B-Instruct)
PRESETS |= {
    "qwen3-vl-2b": _qwen3_vl(2048, 28, 16, 6144, True, 1024, 24, 4096, (5, 11, 17)),
    "qwen3-vl-4b": _qwen3_vl(2560, 36, 32, 9728, True, 1024, 24, 4096, (5, 11, 17)),
    "qwen3-vl-8b": _qwen3_vl(4096, 36, 32, 12288, False, 1152, 27, 4304, (8, 16, 24)),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A copy of preset `name` with `overrides` applied (vision may be a dict or VisionConfig)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[name]
    cfg = replace(base, **{k: v for k, v in overrides.items() if k != "vision"})
    if "vision" in overrides:
        vision = overrides["vision"]
        cfg.vision = VisionConfig(**vision) if isinstance(vision, dict) else vision
    cfg.__post_init__()
    return cfg


__all__ = ["ModelConfig", "VisionConfig", "PRESETS", "preset"]
