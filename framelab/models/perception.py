"""Perception heads: what the vision stage trains the tower and projector with.

Real video encoders start from supervised or contrastive pretraining; framelab's embedded stand-in
supervises every vision token with the world's exact ground truth (`datamodules.perception_labels`):
linear heads read colour, shape and motion direction (or background) from
- each token of the tower's output (before the merge; the data's patch cells when the tower
  merges 2 x 2, the merged cells when it does not merge), and
- each merged token of the projector's output -- what the LM will read, so colour, shape and
  motion must survive the merge and the projector,
and the number of objects from the mean of a clip's projector tokens. Colour has a background
class and is trained on every token; shape and direction are trained on object tokens only, so
the many background tokens do not drown them.

`grounding_loss` is the other half, for the video-LLM stages: the LM's own hidden states at the
vision tokens name their object's words through the LM's output head, so that a question's words
and the tokens of the object it names meet in the LM's word space.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from framelab.models.config import ModelConfig

ATTRIBUTES = {"colour": 9, "shape": 7, "direction": 6}  # ids of datamodules.perception_labels
MAX_COUNT = 8


class PerceptionHeads(nn.Module):
    """Linear heads of the perception loss; with `objects`, also a shape head on each object's
    tokens pooled by their maximum (tower and projector)."""

    def __init__(self, config: ModelConfig, objects: bool = False):
        super().__init__()
        self.tower = nn.ModuleDict({k: nn.Linear(config.vision.width, n) for k, n in ATTRIBUTES.items()})
        self.merged = nn.ModuleDict({k: nn.Linear(config.hidden, n) for k, n in ATTRIBUTES.items()})
        self.count = nn.Linear(config.hidden, MAX_COUNT + 1)
        shapes = ATTRIBUTES["shape"] - 1
        self.object_shape = nn.ModuleDict({"tower": nn.Linear(config.vision.width, shapes),
                                           "merged": nn.Linear(config.hidden, shapes)}
                                          ) if objects else None


def _object_shape_loss(head: nn.Linear, x: torch.Tensor, labels: torch.Tensor,
                       video: torch.Tensor) -> torch.Tensor:
    """Shape of each object from the maximum over its tokens (an object: the tokens of one video
    labelled with one colour and shape), so one token that shows the outline is enough."""
    obj = labels[:, 0] != ATTRIBUTES["colour"] - 1
    if not obj.any():
        return x.sum() * 0.0
    key = (video[obj] * ATTRIBUTES["colour"] + labels[obj, 0]) * ATTRIBUTES["shape"] + labels[obj, 1]
    groups, index = torch.unique(key, return_inverse=True)
    feats = x[obj]
    pooled = feats.new_full((len(groups), feats.shape[1]), float("-inf")).scatter_reduce(
        0, index[:, None].expand_as(feats), feats, "amax", include_self=False)
    shape = torch.zeros(len(groups), dtype=torch.long, device=x.device).scatter(
        0, index, labels[obj, 1])
    return F.cross_entropy(head(pooled), shape)


def _attribute_losses(heads: nn.ModuleDict, x: torch.Tensor, labels: torch.Tensor) -> dict:
    obj = labels[:, 0] != ATTRIBUTES["colour"] - 1
    out = {"colour": F.cross_entropy(heads["colour"](x), labels[:, 0])}
    for j, name in enumerate(("shape", "direction"), start=1):
        out[name] = (F.cross_entropy(heads[name](x[obj]), labels[obj, j]) if obj.any()
                     else x.sum() * 0.0)
    return out


def perception_loss(vision: nn.Module, projector: nn.Module, heads: PerceptionHeads,
                    videos: list[torch.Tensor], labels: list[dict | None]) -> tuple[torch.Tensor, dict]:
    """(loss, {name: value}) over the videos that have labels; the loss is the sum of the tower's
    and the projector's attribute losses and the count loss (zero when no video has labels)."""
    keep = [i for i, lab in enumerate(labels) if lab is not None]
    if not keep:
        zero = sum(p.sum() for p in heads.parameters()) * 0.0
        return zero, {}
    tokens = vision([videos[i] for i in keep])
    merged = [projector(t) for t in tokens]
    dev = merged[0].device
    coarse = torch.cat([torch.as_tensor(labels[i]["tokens"]) for i in keep]).to(dev)
    # the tower's own tokens: the data's patch cells when it merges 2 x 2, else the merged tokens
    fine = coarse if vision.cfg.merge == 1 else torch.cat(
        [torch.as_tensor(labels[i]["patches"]) for i in keep]).to(dev)
    count = torch.tensor([min(labels[i]["count"], MAX_COUNT) for i in keep], device=dev)
    terms = {f"tower_{k}": v for k, v in _attribute_losses(heads.tower, torch.cat(tokens), fine).items()}
    terms |= {f"merged_{k}": v for k, v in _attribute_losses(heads.merged, torch.cat(merged), coarse).items()}
    terms["count"] = F.cross_entropy(heads.count(torch.stack([m.mean(0) for m in merged])), count)
    for name, feats, lab in ((("tower", tokens, fine), ("merged", merged, coarse))
                             if heads.object_shape is not None else ()):
        video = torch.cat([torch.full((len(f),), i, device=dev) for i, f in enumerate(feats)])
        terms[f"{name}_object_shape"] = _object_shape_loss(heads.object_shape[name],
                                                           torch.cat(feats), lab, video)
    return sum(terms.values()), {k: float(v.detach()) for k, v in terms.items()}


def grounding_loss(hidden: torch.Tensor, input_ids: torch.Tensor, video_id: int,
                   counts: list[int], labels: list[dict | None], words: torch.Tensor,
                   output_weight: torch.Tensor) -> torch.Tensor | None:
    """Word grounding of the LM's vision tokens: at every object token the LM's last hidden state
    predicts, through the LM's own output head, the words of that object's colour, shape and
    motion direction (" red", " circle", " left"), a cross-entropy over the whole vocabulary per
    word, averaged over the words. Background tokens, unlabelled videos and "not clearly moving"
    directions carry none. `counts` are the videos' vision token counts in placeholder order,
    `words` the (attribute, class) -> token id table (-1: no word). None when nothing is labelled.
    """
    slots = (input_ids == video_id).nonzero()            # row-major: the videos' order
    feats, targets, start = [], [], 0
    for n, lab in zip(counts, labels):
        if lab is not None:
            tok = torch.as_tensor(lab["tokens"], device=hidden.device)
            keep = tok[:, 0] != ATTRIBUTES["colour"] - 1
            where = slots[start:start + n][keep]
            feats.append(hidden[where[:, 0], where[:, 1]])
            targets.append(torch.stack([words[j][tok[keep, j]] for j in range(3)], dim=1))
        start += n
    if not feats or not sum(len(f) for f in feats):
        return None
    feats, targets = torch.cat(feats), torch.cat(targets)
    logp = torch.log_softmax((feats @ output_weight.t()).float(), dim=-1)
    valid = targets >= 0
    picked = logp.gather(1, targets.clamp(min=0))
    return -(picked * valid).sum() / valid.sum().clamp(min=1)
