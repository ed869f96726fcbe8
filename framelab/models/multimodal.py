"""MultimodalLM: vision encoder + projector spliced into the decoder LM at placeholder tokens.

The text holds, for each video, a run of `video_token_id` placeholders, exactly as many as the
video's merged grid has cells (see `framelab.models.vision.video_token_count`); videos are given
in the order their runs appear in the row-major flattened `input_ids`.

3D rotary positions (Qwen2-VL's M-RoPE): a text token advances all three axes together; a video
block starting at position p places cell (t, h, w) at (p + t, p + h, p + w) and the next text
token continues at p + max(T, H, W). Positions restart at every document of a packed row.
"""
from __future__ import annotations

import torch
from torch import nn

from framelab.kernels import AttentionSpec
from framelab.models.config import ModelConfig
from framelab.models.transformer import DecoderLM, LMOutput
from framelab.models.vision import Projector, VisionEncoder, merged_grid


def multimodal_positions(input_ids: torch.Tensor, video_token_id: int,
                         grids: list[tuple[int, int, int]],
                         cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """(3, B, S) positions for rows of tokens whose placeholder runs match `grids` in order."""
    b, s = input_ids.shape
    out = torch.zeros(3, b, s, dtype=torch.long)
    ids = input_ids.cpu()
    starts = set(cu_seqlens.tolist()) if cu_seqlens is not None else {0}
    grid_iter = iter(grids)
    for row in range(b):
        i, cur = 0, 0
        while i < s:
            if i in starts:
                cur = 0
            if ids[row, i] != video_token_id:
                out[:, row, i] = cur
                cur, i = cur + 1, i + 1
                continue
            try:
                t, h, w = next(grid_iter)
            except StopIteration:
                raise ValueError("more video placeholder runs in input_ids than videos") from None
            n = t * h * w
            if i + n > s or bool((ids[row, i:i + n] != video_token_id).any()):
                raise ValueError(f"a video with a {t}x{h}x{w} grid needs {n} consecutive "
                                 f"placeholder tokens at position {i}")
            tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w),
                                        indexing="ij")
            out[:, row, i:i + n] = torch.stack([tt.flatten(), hh.flatten(), ww.flatten()]) + cur
            cur, i = cur + max(t, h, w), i + n
    if next(grid_iter, None) is not None:
        raise ValueError("more videos than video placeholder runs in input_ids")
    return out.to(input_ids.device)


class MultimodalLM(nn.Module):
    def __init__(self, config: ModelConfig, video_token_id: int):
        super().__init__()
        if config.vision is None:
            raise ValueError("MultimodalLM needs model.vision settings")
        self.config = config
        self.video_token_id = video_token_id
        self.lm = DecoderLM(config)
        self.vision = VisionEncoder(config.vision)
        self.projector = Projector(config.vision, config.hidden)

    def embed(self, input_ids: torch.Tensor, videos: list[torch.Tensor] | None = None,
              cu_seqlens: torch.Tensor | None = None):
        """Input embeddings with vision tokens spliced in, and their (3, B, S) positions."""
        videos = videos or []
        embeds = self.lm.embed_tokens(input_ids)
        grids = [merged_grid(v.shape[0], v.shape[2], v.shape[3], self.config.vision)
                 for v in videos]
        positions = multimodal_positions(input_ids, self.video_token_id, grids, cu_seqlens)
        if videos:
            vision = torch.cat([self.projector(t) for t in self.vision(videos)])
            slots = input_ids == self.video_token_id
            if int(slots.sum()) != vision.shape[0]:
                raise ValueError(f"{int(slots.sum())} video placeholders but {vision.shape[0]} "
                                 "vision tokens")
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), vision.to(embeds.dtype))
        return embeds, positions

    def hidden_states(self, input_ids, videos=None, cu_seqlens=None, cache=None):
        embeds, positions = self.embed(input_ids, videos, cu_seqlens)
        spec = AttentionSpec(causal=True, cu_seqlens=cu_seqlens)
        return self.lm.hidden_states(inputs_embeds=embeds, positions=positions, spec=spec,
                                     cache=cache)

    def forward(self, input_ids, videos=None, cu_seqlens=None, cache=None) -> LMOutput:
        hidden = self.hidden_states(input_ids, videos, cu_seqlens, cache)
        return LMOutput(logits=self.lm.logits(hidden), hidden_states=hidden)
