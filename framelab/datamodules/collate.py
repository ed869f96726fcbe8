"""How pending items become batches: planning how many items a batch takes, and collating them.

Planners have the signature `plan(pending, pull) -> int` used by `LockstepLoader`; skip items
(corrupt samples) cost nothing and ride along. Collators build the batch dicts of the datamodule
contracts (see VideoTextDataModule / ImageTokenDataModule).
"""
from __future__ import annotations

import numpy as np
import torch

from framelab.datamodules.chat import IGNORE


def token_budget_plan(max_tokens, max_samples: int = 0):
    """Greedy packing: items in order while their tokens fit in max_tokens (at least one real item;
    at most max_samples real items when > 0). `max_tokens` may be a callable, read per batch (a
    budget that a curriculum changes during the run)."""
    budget = max_tokens if callable(max_tokens) else (lambda: max_tokens)

    def plan(pending, pull) -> int:
        max_tokens = budget()
        total = real = i = 0
        while True:
            if i == len(pending) and not pull():
                return i
            item = pending[i]
            if "_skip" not in item:
                if real and (total + item["num_tokens"] > max_tokens or real == max_samples):
                    return i
                total += item["num_tokens"]
                real += 1
            i += 1
    return plan


def batch_size_plan(batch_size: int):
    """Fixed batches: items in order until batch_size real items (fewer at the end of the stream)."""
    def plan(pending, pull) -> int:
        real = i = 0
        while real < batch_size:
            if i == len(pending) and not pull():
                return i
            real += "_skip" not in pending[i]
            i += 1
        return i
    return plan


def _common(items: list) -> dict:
    out = {"sample_ids": [it["_key"] for it in items], "meta": [it["meta"] for it in items],
           "videos": [it["video"] for it in items if it["video"] is not None]}  # None: text-only
    if any("vision_labels" in it for it in items):   # a row may start with a text-only item
        out["vision_labels"] = [it.get("vision_labels") for it in items if it["video"] is not None]
    return out


def collate_packed(items: list, pad_id: int, pad_to_multiple_of: int = 0) -> dict:
    """One row (B = 1) holding every item back to back; cu_seqlens (n_docs + 1,) int32 delimits the
    documents. With pad_to_multiple_of > 0 the row is padded with pad_id (labels -100) as one more
    trailing document, so cu_seqlens[-1] always equals the row length. A batch without usable items
    is a single pad token (one document, no label)."""
    items = [it for it in items if "_skip" not in it]
    ids = [it["input_ids"] for it in items]
    labels = [it["labels"] for it in items]
    lengths = [len(x) for x in ids]
    total = sum(lengths)
    pad = (-total) % pad_to_multiple_of if pad_to_multiple_of else 0
    if total == 0:
        pad = max(pad, 1)
    if pad:
        ids.append(np.full(pad, pad_id, dtype=np.int64))
        labels.append(np.full(pad, IGNORE, dtype=np.int64))
        lengths.append(pad)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.from_numpy(np.cumsum(lengths, dtype=np.int32))
    row = lambda parts: torch.from_numpy(np.concatenate(parts).astype(np.int64))[None]  # noqa: E731
    batch = {"input_ids": row(ids), "labels": row(labels), "cu_seqlens": cu,
             **_common(items)}
    if items and "future" in items[0]:
        batch["future_videos"] = [it["future"] for it in items]
    return batch


def collate_padded(items: list, pad_id: int) -> dict:
    """Rows right-padded to the longest item, with attention_mask (1 = token, 0 = padding)."""
    items = [it for it in items if "_skip" not in it]
    width = max([len(it["input_ids"]) for it in items], default=1)
    rows = max(len(items), 1)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    labels = torch.full((rows, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for r, it in enumerate(items):
        n = len(it["input_ids"])
        ids[r, :n] = torch.as_tensor(it["input_ids"], dtype=torch.long)
        labels[r, :n] = torch.as_tensor(it["labels"], dtype=torch.long)
        mask[r, :n] = 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask, **_common(items)}
    if items and "future" in items[0]:
        batch["future_videos"] = [it["future"] for it in items]
    return batch


def collate_image_tokens(items: list) -> dict:
    """Stacked token grids and class labels (an all-corrupt step gives an empty batch, B = 0)."""
    items = [it for it in items if "_skip" not in it]
    if not items:
        return {"tokens": torch.zeros((0, 0), dtype=torch.long), "labels": torch.zeros(0, dtype=torch.long),
                "sample_ids": []}
    return {"tokens": torch.stack([torch.as_tensor(it["tokens"], dtype=torch.long) for it in items]),
            "labels": torch.tensor([it["label"] for it in items], dtype=torch.long),
            "sample_ids": [it["_key"] for it in items]}
