"""Set-autoregressive (SAR) image generation: the Fully Masked Transformer (fmt.py), its three
attention masks (masks.py), set partitions of the token grid (partition.py) and set-by-set
generation with or without the encoder KV cache (generation.py). Only SAR uses this sub-package;
it builds on the shared backbone in `framelab.models` (Block, KVCache, RMSNorm, rotary)."""
from framelab.models.sar.fmt import FMTConfig, FullyMaskedTransformer
from framelab.models.sar.generation import SamplingConfig, generate
from framelab.models.sar.partition import (Partition, PartitionConfig, PartitionSampler,
                                           make_partition, parse)

__all__ = ["FMTConfig", "FullyMaskedTransformer", "Partition", "PartitionConfig",
           "PartitionSampler", "SamplingConfig", "generate", "make_partition", "parse"]
