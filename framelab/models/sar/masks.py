"""The three masks of the Fully Masked Transformer, from the set index of every token.

Set indices count along the generation order (0 = the first set generated). The class token that
starts the encoder sequence carries set index CLASS_SET = -1: every token may see it.

- encoder self-attention, the *generalised causal mask*: a token of set s sees the tokens of sets
  <= s. Block-causal over sets; lower-triangular when every set has one token; all True when there
  is one set.
- decoder self-attention: a query of set s sees the queries of set s (the tokens generated
  together in one step).
- decoder cross-attention: a query of set s sees the encoder outputs of sets < s (and the class
  token), i.e. everything generated before its step.
All masks are boolean (Sq, Sk), True = may attend, as `framelab.kernels.AttentionSpec.mask` wants
(after adding two leading broadcast dimensions).
"""
from __future__ import annotations

import torch

CLASS_SET = -1


def with_class(set_ids: torch.Tensor) -> torch.Tensor:
    """Prefix the class token's set index to a sequence's set indices."""
    return torch.cat([set_ids.new_full((1,), CLASS_SET), set_ids])


def encoder_mask(enc_sets: torch.Tensor) -> torch.Tensor:
    return enc_sets.unsqueeze(0) <= enc_sets.unsqueeze(1)


def decoder_self_mask(dec_sets: torch.Tensor) -> torch.Tensor:
    return dec_sets.unsqueeze(0) == dec_sets.unsqueeze(1)


def decoder_cross_mask(dec_sets: torch.Tensor, enc_sets: torch.Tensor) -> torch.Tensor:
    return enc_sets.unsqueeze(0) < dec_sets.unsqueeze(1)


def as_spec_mask(mask: torch.Tensor) -> torch.Tensor:
    """(Sq, Sk) -> (1, 1, Sq, Sk), broadcast over batch and heads."""
    return mask[None, None]
