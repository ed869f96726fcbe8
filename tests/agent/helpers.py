"""A tiny multimodal model, a small tokenizer with framelab's special tokens, and a scripted
policy (the model's logits replaced by a fixed token sequence) for the agent's tests."""
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from framelab.agent.loop import SYSTEM
from framelab.datamodules.special_tokens import SPECIAL_TOKENS, VIDEO_PAD
from framelab.models import MultimodalLM, preset

CORPUS = [SYSTEM, "search(red circle, 3) zoom(1.0, 2.5, 8) finish(B) memory_write(note)",
          "Which object appears only briefly in the video? A. red circle B. blue square",
          "During which time span, in seconds, is the red circle visible? 0.5-1.5, 2.0-3.0"]


def tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return tok


def model(tok, seed: int = 0) -> MultimodalLM:
    torch.manual_seed(seed)
    cfg = preset("tiny", vocab_size=tok.get_vocab_size(),
                 vision={"width": 32, "depth": 1, "heads": 2, "patch_size": 8})
    return MultimodalLM(cfg, video_token_id=tok.token_to_id(VIDEO_PAD)).eval()


def video(frames: int = 32, seed: int = 0) -> torch.Tensor:
    """(T, 3, 32, 32) in [0, 1]: a dark background with a bright square in frames 8..15."""
    rng = np.random.default_rng(seed)
    x = torch.full((frames, 3, 32, 32), 0.1) + 0.02 * torch.from_numpy(
        rng.standard_normal((frames, 3, 32, 32))).float()
    x[8:16, :, 4:12, 4:12] = 0.9
    return x.clamp(0, 1)


def script(m: MultimodalLM, tok, pieces: list[str]) -> list[int]:
    """Make `m` emit the token ids of `pieces` (special tokens kept), one per decode step,
    whatever its input; returns the ids."""
    ids = []
    for p in pieces:
        i = tok.token_to_id(p)
        ids += [i] if i is not None else tok.encode(p, add_special_tokens=False).ids
    step = {"k": 0}

    def logits(hidden):
        out = torch.zeros(*hidden.shape[:-1], m.lm.output_weight.shape[0])
        out[..., ids[min(step["k"], len(ids) - 1)]] = 50.0
        step["k"] += 1
        return out

    m.lm.logits = logits
    return ids
