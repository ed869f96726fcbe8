"""Writing, finding and reading checkpoints.

Writing: `AtomicCheckpointIO` writes each checkpoint to a temporary file in the same folder,
flushes it to disk and renames it over the target, so a checkpoint file is always complete
(a crash mid-write leaves only a stray temporary file, never a truncated checkpoint).

Finding, for `ckpt_path=last`: the newest complete checkpoint of this experiment — first in the
current run directory (so `hydra.run.dir=DIR ckpt_path=last` resumes in place), else in the most
recent earlier run under `runs/<experiment>/`. In a directory, `checkpoints/last.ckpt` is preferred;
if it cannot be read, the newest other readable checkpoint there is used, with a warning naming
both files.

Reading (every LightningModule shares this): a framelab checkpoint stores, beside Lightning's own
entries, one `framelab_model` entry -- the spec its module's model is built from: `{"module": the
LightningModule class, "config": the resolved model config, "tokens": the token ids it needs}` --
so a module rebuilds its model from a checkpoint without data. Checkpoints written before that key
existed (`videollm_model` + `videollm_tokens`, `sar_model`) are read through `model_spec` as well.
`read_weights` / `load_weights` serve `init_from`: a previous stage's weights, all of them or only
some parts of the model (its top-level sub-modules, e.g. the vision tower and projector).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from framelab.errors import UserError

log = logging.getLogger(__name__)


MODEL_KEY = "framelab_model"
# entries of checkpoints written before MODEL_KEY: the module they came from, config key, token key
LEGACY_KEYS = {"videollm_model": ("VideoLLMModule", "videollm_tokens"),
               "sar_model": ("SARGenModule", None)}


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def readable(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - any failure means the file is not a usable checkpoint
        return False
    return True


def best_in(directory: Path) -> Path | None:
    """`checkpoints/last.ckpt` of a run directory, or its newest readable other checkpoint."""
    folder = directory / "checkpoints"
    if not folder.is_dir():
        return None
    last = folder / "last.ckpt"
    if last.exists() and readable(last):
        return last
    others = sorted((p for p in folder.glob("*.ckpt") if p.name != "last.ckpt"),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in others:
        if readable(candidate):
            if last.exists():
                log.warning("framelab: %s is unreadable (truncated or corrupt); resuming from %s "
                            "instead", last, candidate)
            return candidate
    if last.exists():
        log.warning("framelab: %s is unreadable and no other checkpoint there is usable", last)
    return None


def find_last(run_dir: Path) -> Path | None:
    siblings = sorted((p for p in run_dir.parent.iterdir() if p.is_dir() and p != run_dir),
                      reverse=True) if run_dir.parent.is_dir() else []
    for directory in [run_dir, *siblings]:
        found = best_in(directory)
        if found is not None:
            return found
    return None


def resolve_ckpt_path(value, run_dir: Path) -> str | None:
    if value in (None, ""):
        return None
    if value == "last":
        found = find_last(Path(run_dir))
        if found is None:
            raise UserError(f"ckpt_path=last: no complete checkpoints/last.ckpt under "
                            f"{Path(run_dir).parent}; train first, or pass a .ckpt path")
        return str(found)
    path = Path(str(value))
    if not path.exists():
        raise UserError(f"ckpt_path={value}: no such file; give an existing .ckpt or `last`")
    if not readable(path):
        raise UserError(f"ckpt_path={value}: the file cannot be read as a checkpoint (truncated "
                        "or corrupt); pass another checkpoint, or `last` to pick a complete one")
    return str(path)


def model_spec(checkpoint: dict, where: str) -> dict:
    """The model spec {"module", "config", "tokens"} a checkpoint stores (or its legacy entries)."""
    spec = checkpoint.get(MODEL_KEY) if isinstance(checkpoint, dict) else None
    if isinstance(spec, dict) and isinstance(spec.get("config"), dict):
        return {"module": spec.get("module"), "config": dict(spec["config"]),
                "tokens": dict(spec.get("tokens") or {})}
    for key, (module, tokens) in LEGACY_KEYS.items():
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            return {"module": module, "config": dict(checkpoint[key]),
                    "tokens": dict(checkpoint.get(tokens) or {}) if tokens else {}}
    raise UserError(f"{where}: the checkpoint has no '{MODEL_KEY}' entry, so it was not written by "
                    "a framelab module; give a checkpoint of `framelab fit` or `framelab convert`")


def read_weights(path: str | Path, where: str) -> dict:
    """{"spec": model spec, "state_dict": the model's weights without the `model.` prefix} of a
    checkpoint file (a `framelab fit` checkpoint or the output of `framelab convert`)."""
    path = Path(str(path))
    if not path.is_file():
        raise UserError(f"{where}={path}: no such file; give a checkpoint (.ckpt) of `framelab fit` "
                        "or the output of `framelab convert`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a checkpoint
        raise UserError(f"{where}={path}: cannot be read as a checkpoint ({type(exc).__name__}); "
                        "it is truncated or not a torch checkpoint") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"{where}={path}: no 'state_dict' entry; give a checkpoint of `framelab fit`")
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return {"spec": model_spec(ckpt, f"{where}={path}"), "state_dict": state}


def load_weights(model: torch.nn.Module, source: dict, parts=None, where: str = "init_from") -> None:
    """Copy `source`'s weights (from `read_weights`) into `model`: every weight, or only those of
    the named top-level sub-modules `parts`. Any missing, unexpected or differently shaped weight
    among those taken is one error line."""
    names = [n for n, _ in model.named_children()]
    parts = list(parts) if parts else None
    unknown = sorted(set(parts or []) - set(names))
    if unknown:
        raise UserError(f"{where}: unknown parts {unknown}; this model has {', '.join(names)}")

    def taken(key: str) -> bool:
        return parts is None or key.split(".", 1)[0] in parts

    ours = {k: v for k, v in model.state_dict().items() if taken(k)}
    theirs = {k: v for k, v in source["state_dict"].items() if taken(k)}
    missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    if missing or unexpected:
        raise UserError(f"{where}: weights do not match the model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    for key, value in theirs.items():
        if value.shape != ours[key].shape:
            raise UserError(f"{where}: {key} has shape {list(value.shape)} in the checkpoint but "
                            f"{list(ours[key].shape)} in this model; set the model config to match")
    model.load_state_dict(theirs, strict=parts is None)
