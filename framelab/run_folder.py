"""What framelab reads back from a run folder: the datamodule its `config.yaml` describes.

A run folder may come from anywhere, and Hydra's `instantiate` calls whatever `_target_` names.
So the data config of a run folder is built only when every `_target_` in it is one of framelab's
own datamodules; anything else is refused with one line, before any code from the file runs.
"""
from __future__ import annotations

from pathlib import Path

from framelab.errors import UserError

DATAMODULES = ("framelab.datamodules.video_text.VideoTextDataModule",
               "framelab.datamodules.image_tokens.ImageTokenDataModule",
               "framelab.datamodules.synthetic_tokens.SyntheticTokenDataModule")


def _targets(node, where: str = "data"):
    """(where, value) of every `_target_` in a plain config tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield where, value
            else:
                yield from _targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


def load_datamodule(config: Path, where: str):
    """The datamodule of the run config at `config`, built only from framelab's own classes."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if not config.is_file():
        raise UserError(f"{where}: no run config at {config}; the checkpoint must sit in "
                        "<run dir>/checkpoints/ beside its run's config.yaml")
    try:
        data = OmegaConf.to_container(OmegaConf.load(config).data, resolve=True)
    except Exception as exc:  # noqa: BLE001 - YAML and OmegaConf raise many types
        raise UserError(f"{where}: {config} is not a run config with a `data` section "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    targets = list(_targets(data))
    bad = [(f"{k}._target_", v) for k, v in targets if v not in DATAMODULES or k != "data"]
    if bad or not targets:
        key, value = bad[0] if bad else ("data._target_", None)
        raise UserError(f"{where}: {config} names {key}={value!r}; a run config's data may only "
                        f"build one of framelab's datamodules ({', '.join(DATAMODULES)})")
    return instantiate(data, _convert_="all")
