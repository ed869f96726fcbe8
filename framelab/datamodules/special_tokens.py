"""The one place where framelab's special tokens are named.

Every tokenizer framelab uses (the world tokenizer it trains, or a local tokenizer.json such as
Qwen3's) gets these registered as special tokens, so the chat template, the vision placeholders,
latent spans and tool calls mean the same ids everywhere. Qwen-compatible spellings are used, so a
Qwen tokenizer already has most of them and keeps its ids.
"""
from __future__ import annotations

PAD = "<|endoftext|>"          # also the end-of-document token
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VIDEO_PAD = "<|video_pad|>"    # one per vision token of a video (and of an image: a 2-frame video)
IMAGE_PAD = "<|image_pad|>"    # reserved for image-native models; framelab streams use VIDEO_PAD
LATENT_START = "<|latent_start|>"
LATENT_END = "<|latent_end|>"
LATENT_PAD = "<|latent_pad|>"  # placeholder for one latent step inside a latent span
TOOL_CALL = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
TOOL_RESPONSE = "<tool_response>"
TOOL_RESPONSE_END = "</tool_response>"
THINK = "<think>"
THINK_END = "</think>"
ANSWER = "<answer>"
ANSWER_END = "</answer>"

SPECIAL_TOKENS = (
    PAD, IM_START, IM_END, VISION_START, VISION_END, VIDEO_PAD, IMAGE_PAD,
    LATENT_START, LATENT_END, LATENT_PAD, TOOL_CALL, TOOL_CALL_END,
    TOOL_RESPONSE, TOOL_RESPONSE_END, THINK, THINK_END, ANSWER, ANSWER_END,
)

# placeholders in conversation text that stand for one visual input
MEDIA_PLACEHOLDERS = ("<video>", "<image>")


def special_token_ids(tokenizer) -> dict[str, int]:
    """{token string: id} for every special token; the tokenizer must have them all registered."""
    ids = {}
    for tok in SPECIAL_TOKENS:
        i = tokenizer.token_to_id(tok)
        if i is None:
            raise ValueError(f"tokenizer lacks special token {tok!r}; load it with "
                             "framelab.datamodules.tokenizer.load_tokenizer")
        ids[tok] = i
    return ids
