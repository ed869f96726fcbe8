"""LightningDataModules and the data pipeline behind them.

    VideoTextDataModule   video/image + conversation shards -> packed token batches (video_text.py)
    ImageTokenDataModule  class-labelled images -> VQ token grids (image_tokens.py)

Pipeline, one file per job: shards.py (tar format, index, manifest) -> remote.py (data_dir entries
that are URLs, with their index) -> reader.py (random access; remote shards through shard_cache.py,
downloaded by fetch.py) -> order.py (epoch order) -> stream.py (rank/worker slices) -> decode.py
(JSON, frames) -> chat.py / tokenizer.py / special_tokens.py (text); token_grids.py (image tokens
computed once) -> lockstep.py + collate.py (batches across ranks, data position) -> base.py (the
shared LightningDataModule). synth.py and pack.py (+ media.py, targets.py) build shards;
commands.py is `framelab data`. Classes are imported lazily so `import framelab.datamodules` stays
light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"VideoTextDataModule": "video_text", "ImageTokenDataModule": "image_tokens"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
