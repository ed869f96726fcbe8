"""MultimodalLM: vision encoder + projector spliced into the decoder LM at placeholder tokens.

The text holds, for each video, a run of `video_token_id` placeholders, exactly as many as the
video's merged grid has cells (see `framelab.models.vision.video_token_count`); videos are given
in the order their runs appear in the row-major flattened `input_ids`.

3D rotary positions (Qwen2-VL's M-RoPE): a text token advances all three axes together; a video
block starting at position p places cell (t, h, w) at (p + t, p + h, p + w) and the next text
token continues at p + max(T, H, W). Positions restart at every document of a packed row.

With `vision.flavour="qwen3_vl"` the same class is Qwen3-VL (transformers'
`Qwen3VLForConditionalGeneration`): images (at `image_token_id` runs) and videos (at
`video_token_id` runs, one run per temporal step, as Qwen3-VL's prompt separates frames by
timestamps) are encoded by the Qwen3-VL tower, positions follow
`framelab.models.qwen3_vl.rope_index` with interleaved M-RoPE, and DeepStack adds the mergers of
intermediate tower layers to the first LM layers' hidden states at the visual positions. `forward` then also takes transformers' keyword
inputs (`input_ids`, `attention_mask`, `pixel_values` + `image_grid_thw`, `pixel_values_videos` +
`video_grid_thw`) and returns an object with `.logits`.

With `config.cue_recovery` = k > 0 the model has ViCuR's cue recovery (`cue_recovery`, a part of
its own): after every k-th decoder layer the first `sink_token_id` token of each document gathers
the document's visual tokens by cross-attention, during prefill only
(`framelab.models.cue_recovery`). `prepare` returns where the sinks are; generation passes them
to its prefill.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from framelab.kernels import AttentionSpec
from framelab.models.config import ModelConfig
from framelab.models.cue_recovery import CueInputs, CueRecovery
from framelab.models.qwen3_vl import packed_rope_index, rope_index
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


@dataclass
class MultimodalInputs:
    """What the LM consumes: input embeddings (B, S, D) with vision tokens spliced in, rotary
    positions (3, B, S), and DeepStack additions (mask (B, S), [features (n, D)]) or None."""
    embeds: torch.Tensor
    positions: torch.Tensor
    deepstack: tuple[torch.Tensor, list[torch.Tensor]] | None = None
    cue: CueInputs | None = None      # the sinks and visual tokens (cue recovery), or None


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) attention mask from a (B, S) 0/1 padding mask: real keys only (causality is
    the spec's); a padding query sees itself so that no softmax row is empty."""
    valid = attention_mask.bool()
    s = valid.shape[1]
    own = torch.eye(s, dtype=torch.bool, device=valid.device)
    return valid[:, None, None, :] | own[None, None]


class MultimodalLM(nn.Module):
    def __init__(self, config: ModelConfig, video_token_id: int, image_token_id: int | None = None,
                 sink_token_id: int | None = None):
        super().__init__()
        if config.vision is None:
            raise ValueError("MultimodalLM needs model.vision settings")
        if config.cue_recovery and sink_token_id is None:
            raise ValueError("model.cue_recovery needs the sink token's id (<|im_start|>)")
        self.config = config
        self.video_token_id = video_token_id
        self.image_token_id = image_token_id
        self.qwen3_vl = config.vision.flavour == "qwen3_vl"
        self.lm = DecoderLM(config)
        self.vision = VisionEncoder(config.vision)
        self.projector = Projector(config.vision, config.hidden, "pre" if self.qwen3_vl else None)
        if config.vision.deepstack:
            self.deepstack = nn.ModuleList(Projector(config.vision, config.hidden, "post")
                                           for _ in config.vision.deepstack)
        self.sink_token_id = sink_token_id
        if config.cue_recovery:
            self.cue_recovery = CueRecovery(config.hidden, config.heads, config.layers,
                                            int(config.cue_recovery), config.norm_eps)

    def embed(self, input_ids: torch.Tensor, videos: list[torch.Tensor] | None = None,
              cu_seqlens: torch.Tensor | None = None):
        """Input embeddings with vision tokens spliced in, and their (3, B, S) positions."""
        inputs = self.prepare(input_ids, videos, cu_seqlens)
        return inputs.embeds, inputs.positions

    def prepare(self, input_ids: torch.Tensor, videos: list[torch.Tensor] | None = None,
                cu_seqlens: torch.Tensor | None = None, *, pixel_values=None, image_grid_thw=None,
                pixel_values_videos=None, video_grid_thw=None,
                attention_mask: torch.Tensor | None = None) -> MultimodalInputs:
        """Embeddings, positions and DeepStack additions for `input_ids` with `videos` (each
        (T, C, H, W) in [0, 1]) and/or, Qwen3-VL only, transformers' patch inputs."""
        hf = (pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, attention_mask)
        if not self.qwen3_vl:
            if any(x is not None for x in hf):
                raise ValueError("pixel_values / grid_thw / attention_mask inputs need a "
                                 "Qwen3-VL model (vision.flavour=qwen3_vl)")
            inputs = self._prepare_framelab(input_ids, videos or [], cu_seqlens)
        else:
            if cu_seqlens is not None and attention_mask is not None:
                raise ValueError("pass either packed documents (cu_seqlens) or padded rows "
                                 "(attention_mask), not both")
            inputs = self._prepare_qwen3_vl(input_ids, videos or [], *hf, cu_seqlens)
        if hasattr(self, "cue_recovery"):
            visual = [t for t in (self.video_token_id, self.image_token_id) if t is not None]
            inputs.cue = self.cue_recovery.inputs(input_ids, self.sink_token_id, visual, cu_seqlens)
        return inputs

    def _prepare_framelab(self, input_ids, videos, cu_seqlens) -> MultimodalInputs:
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
        return MultimodalInputs(embeds, positions)

    def _prepare_qwen3_vl(self, input_ids, videos, pixel_values, image_grid_thw,
                          pixel_values_videos, video_grid_thw, attention_mask,
                          cu_seqlens=None) -> MultimodalInputs:
        if videos and pixel_values_videos is not None:
            raise ValueError("pass videos either as frames (videos) or as pixel_values_videos")
        images = _patch_items(pixel_values, image_grid_thw, "pixel_values", "image_grid_thw")
        clips = _patch_items(pixel_values_videos, video_grid_thw, "pixel_values_videos",
                             "video_grid_thw")
        clips = clips or [self.vision.patchify(v) for v in videos]
        embeds = self.lm.embed_tokens(input_ids)
        image_grids, video_grids = [g for _, g in images], [g for _, g in clips]
        merge = self.config.vision.merge
        placeholders = bool((input_ids == self.video_token_id).any()) or (
            self.image_token_id is not None and bool((input_ids == self.image_token_id).any()))
        if not images and not clips and cu_seqlens is None and not placeholders:
            if attention_mask is None:
                pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            else:
                pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) * attention_mask.long()
            return MultimodalInputs(embeds, pos.unsqueeze(0).expand(3, -1, -1))
        if cu_seqlens is not None:
            positions = packed_rope_index(input_ids, cu_seqlens, self.image_token_id,
                                          self.video_token_id, image_grids, video_grids, merge)
        else:
            positions = rope_index(input_ids, self.image_token_id, self.video_token_id,
                                   image_grids, video_grids, merge, attention_mask)
        items = images + clips
        if not items:
            return MultimodalInputs(embeds, positions)
        tokens, stack = self.vision.encode_patches(torch.cat([p for p, _ in items]),
                                                   image_grids + video_grids)
        merged = self.projector(tokens)
        layers = [proj(x) for proj, x in zip(getattr(self, "deepstack", []), stack)]
        n_image = sum(t * h * w for t, h, w in image_grids) // merge ** 2
        image_mask = (input_ids == self.image_token_id if self.image_token_id is not None
                      else torch.zeros_like(input_ids, dtype=torch.bool))
        video_mask = input_ids == self.video_token_id
        for mask, count, name in ((image_mask, n_image, "image"),
                                  (video_mask, merged.shape[0] - n_image, "video")):
            if int(mask.sum()) != count:
                raise ValueError(f"{int(mask.sum())} {name} placeholders in input_ids but the "
                                 f"{name} inputs give {count} tokens")
        visual = image_mask | video_mask
        embeds = embeds.masked_scatter(image_mask[..., None], merged[:n_image].to(embeds.dtype))
        embeds = embeds.masked_scatter(video_mask[..., None], merged[n_image:].to(embeds.dtype))
        joint = []
        for feats in layers:           # row-major over the visual positions, images and videos
            out = feats.new_zeros(int(visual.sum()), feats.shape[-1])
            out[image_mask[visual]] = feats[:n_image]
            out[video_mask[visual]] = feats[n_image:]
            joint.append(out)
        return MultimodalInputs(embeds, positions, (visual, joint) if joint else None)

    def hidden_states(self, input_ids, videos=None, cu_seqlens=None, cache=None, **hf_inputs):
        inputs = self.prepare(input_ids, videos, cu_seqlens, **hf_inputs)
        mask = hf_inputs.get("attention_mask")
        spec = AttentionSpec(causal=True, cu_seqlens=cu_seqlens,
                             mask=padding_mask(mask) if mask is not None else None)
        prefill = cache is None or cache.seen == 0       # cue recovery runs in prefill only
        return self.lm.hidden_states(inputs_embeds=inputs.embeds, positions=inputs.positions,
                                     spec=spec, cache=cache, deepstack=inputs.deepstack,
                                     cue=inputs.cue if prefill else None)

    def forward(self, input_ids, videos=None, cu_seqlens=None, cache=None, *, attention_mask=None,
                pixel_values=None, image_grid_thw=None, pixel_values_videos=None,
                video_grid_thw=None, **ignored) -> LMOutput:
        """framelab's call (`input_ids`, `videos`, `cu_seqlens`, `cache`) or, for a Qwen3-VL
        model, transformers' keyword inputs; `mm_token_type_ids` (the token types are read from
        `input_ids`) and transformers' output switches are accepted and ignored."""
        unknown = sorted(set(ignored) - _IGNORED)
        if unknown:
            raise TypeError(f"MultimodalLM.forward got unsupported inputs {unknown}; it takes "
                            "input_ids, videos, cu_seqlens, cache, attention_mask, pixel_values, "
                            "image_grid_thw, pixel_values_videos, video_grid_thw")
        hf = {k: v for k, v in dict(attention_mask=attention_mask, pixel_values=pixel_values,
                                    image_grid_thw=image_grid_thw,
                                    pixel_values_videos=pixel_values_videos,
                                    video_grid_thw=video_grid_thw).items() if v is not None}
        hidden = self.hidden_states(input_ids, videos, cu_seqlens, cache, **hf)
        return LMOutput(logits=self.lm.logits(hidden), hidden_states=hidden)


_IGNORED = {"mm_token_type_ids", "use_cache", "return_dict", "output_attentions",
            "output_hidden_states"}


def _patch_items(pixels, grid_thw, name: str, grid_name: str):
    """Split transformers' concatenated patches (N, patch_dim) into [(patches, (t, h, w))]."""
    if (pixels is None) != (grid_thw is None):
        raise ValueError(f"pass {name} together with {grid_name}")
    if pixels is None:
        return []
    grids = [tuple(int(x) for x in g) for g in torch.as_tensor(grid_thw).tolist()]
    sizes = [t * h * w for t, h, w in grids]
    if sum(sizes) != pixels.shape[0]:
        raise ValueError(f"{name} has {pixels.shape[0]} patches but {grid_name} {grids} needs "
                         f"{sum(sizes)}")
    return list(zip(pixels.split(sizes), grids))
