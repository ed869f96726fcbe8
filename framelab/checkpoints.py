"""Writing, finding and reading checkpoints.

Writing: `AtomicCheckpointIO` writes each checkpoint to a temporary file in the same folder,
flushes it to disk and renames it over the target, so a checkpoint file is always complete
(a crash mid-write leaves only a stray temporary file, never a truncated checkpoint). It reads
checkpoints back for Lightning through `framelab.safe_load` (tensors and plain data only).

Finding, for `ckpt_path=last`: the current run directory's checkpoint (so `hydra.run.dir=DIR
ckpt_path=last` resumes in place), else the newest among the other runs under `runs/<experiment>/`
by the save time the checkpoint records (`framelab_saved_at`; the file time for older ones), then
its step -- never by folder name. In a directory, `checkpoints/last.ckpt` is preferred; if it is
unusable, the newest other usable checkpoint there is taken, with a warning naming both. A sharded
checkpoint (a `last.ckpt/` folder of torch's distributed checkpoint API) counts like a file.

Every candidate is checked without running code from it (`framelab.safe_load`): a truncated,
corrupt or unsafe file is one error line when named directly, and skipped with a warning when
searched for.

Reading (every LightningModule shares this): a framelab checkpoint stores, beside Lightning's own
entries, one `framelab_model` entry -- the spec its module's model is built from: `{"module": the
LightningModule class, "config": the resolved model config, "tokens": the token ids it needs}` --
so a module rebuilds its model from a checkpoint without data. Checkpoints written before that key
existed (`videollm_model` + `videollm_tokens`, `sar_model`) are read through `model_spec` as well.
`read_weights` / `load_weights` serve `init_from`: a previous stage's weights, all of them or only
some parts of the model (its top-level sub-modules, e.g. the vision tower and projector), or a
Hugging Face Qwen3-VL directory given as `hf:DIR` (read with `framelab.models.hf.read_hf`).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from framelab.datamodules.special_tokens import IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START
from framelab.errors import UserError
from framelab.safe_load import check_sharded, is_sharded, load_torch

log = logging.getLogger(__name__)


MODEL_KEY = "framelab_model"
HF_PREFIX = "hf:"     # init_from=hf:DIR / --ckpt hf:DIR: a Hugging Face checkpoint directory
# a Qwen3-VL config.json's special token ids -> the framelab token names a model spec keys them by
HF_TOKENS = {"video_token_id": VIDEO_PAD, "image_token_id": IMAGE_PAD,
             "vision_start_token_id": VISION_START, "vision_end_token_id": VISION_END}
SAVED_AT_KEY = "framelab_saved_at"  # time.time() when the checkpoint was written
# entries of checkpoints written before MODEL_KEY: the module they came from, config key, token key
LEGACY_KEYS = {"videollm_model": ("VideoLLMModule", "videollm_tokens"),
               "sar_model": ("SARGenModule", None)}


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        checkpoint[SAVED_AT_KEY] = time.time()
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        """Lightning's own read of a checkpoint file, always with weights_only (safe_load)."""
        return load_torch(path, f"checkpoint {path}")


def inspect(path: Path, where: str) -> dict:
    """{"step", "saved_at", "module" (the LightningModule that wrote it)} of a checkpoint file or sharded folder, read without running code
    from it; a file that is truncated, corrupt or unsafe is one UserError line."""
    if is_sharded(path):
        ckpt = check_sharded(path, where)
        saved = (path / ".metadata").stat().st_mtime
    elif path.is_file():
        ckpt = load_torch(path, where, mmap=True)
        saved = path.stat().st_mtime
    else:
        raise UserError(f"{where}: {path} is neither a checkpoint file nor a sharded checkpoint "
                        "folder (one with a .metadata index)")
    if not isinstance(ckpt, dict):
        raise UserError(f"{where}: holds a {type(ckpt).__name__}, not a checkpoint dictionary")
    spec = ckpt.get(MODEL_KEY) or {}
    legacy = [LEGACY_KEYS[k][0] for k in LEGACY_KEYS if k in ckpt]
    return {"step": int(ckpt.get("global_step") or 0),
            "saved_at": float(ckpt.get(SAVED_AT_KEY) or saved),
            "module": spec.get("module") if isinstance(spec, dict) and spec else
            (legacy[0] if legacy else None)}


def _usable(path: Path) -> dict | None:
    try:
        return inspect(path, str(path))
    except UserError as exc:
        log.warning("framelab: skipping %s", exc)
        return None


def best_in(directory: Path) -> tuple[Path, dict] | None:
    """(`checkpoints/last.ckpt` of a run directory, or its newest usable other checkpoint, what
    `inspect` says of it)."""
    folder = directory / "checkpoints"
    if not folder.is_dir():
        return None
    last = folder / "last.ckpt"
    found = _usable(last) if last.exists() else None
    if found is not None:
        return last, found
    others = sorted((p for p in folder.glob("*.ckpt") if p.name != "last.ckpt"),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in others:
        found = _usable(candidate)
        if found is not None:
            if last.exists():
                log.warning("framelab: %s is unreadable or unsafe; resuming from %s instead", last,
                            candidate)
            return candidate, found
    return None


def find_last(run_dir: Path) -> tuple[Path, dict] | None:
    """The current run directory's checkpoint (resume in place), else the newest by its own
    recorded save time, then step, among the other run directories of this experiment (their
    names -- timestamps, slurm-<id>, rendezvous ids -- say nothing of their age)."""
    here = best_in(run_dir)
    if here is not None:
        return here
    siblings = [p for p in run_dir.parent.iterdir() if p.is_dir() and p != run_dir] \
        if run_dir.parent.is_dir() else []
    found = [f for f in map(best_in, siblings) if f is not None]
    return max(found, key=lambda f: (f[1]["saved_at"], f[1]["step"])) if found else None


def resolve_ckpt_path(value, run_dir: Path, module: str | None = None) -> str | None:
    """The checkpoint `ckpt_path=value` names, checked: readable, safe, and written by `module`
    (the LightningModule of this run) when the checkpoint says which wrote it."""
    if value in (None, ""):
        return None
    if value == "last":
        found = find_last(Path(run_dir))
        if found is None:
            raise UserError(f"ckpt_path=last: no complete checkpoints/last.ckpt (nor other usable "
                            f"checkpoint) under {Path(run_dir).parent}; train first, or pass a "
                            ".ckpt path")
        path, info = found
        log.warning("ckpt_path=last: %s (step %d, saved %s)", path, info["step"],
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["saved_at"])))
    else:
        path = Path(str(value))
        if not path.exists():
            raise UserError(f"ckpt_path={value}: no such file; give an existing .ckpt or `last`")
        info = inspect(path, f"ckpt_path={value}")
    if module and info["module"] not in (None, module):
        raise UserError(f"ckpt_path={value}: {path} was written by {info['module']}, but this run "
                        f"is a {module}; give a checkpoint of the same experiment")
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


def read_hf_weights(value: str, where: str) -> dict:
    """`read_weights` of `hf:DIR`, a local Hugging Face Qwen3-VL checkpoint directory: the spec
    holds its architecture (config.json) and its special token ids under framelab's token names,
    and is marked `"source": "hf"`."""
    from framelab.models.hf import read_hf

    directory = Path(value[len(HF_PREFIX):]).expanduser()
    if not directory.is_dir():
        raise UserError(f"{where}={value}: {directory} is not a directory; give hf:DIR with DIR a "
                        "local Qwen3-VL checkpoint directory (config.json + model.safetensors)")
    config, tokens, state = read_hf(directory)
    if config.vision is None:
        raise UserError(f"{where}={value}: a Qwen3 text checkpoint (model_type qwen3); hf: starts "
                        "a video LLM from a Qwen3-VL directory (model_type qwen3_vl)")
    return {"spec": {"module": None, "config": config.to_dict(), "source": "hf",
                     "tokens": {HF_TOKENS[k]: v for k, v in tokens.items() if k in HF_TOKENS}},
            "state_dict": state}


def read_weights(path: str | Path, where: str) -> dict:
    """{"spec": model spec, "state_dict": the model's weights without the `model.` prefix} of a
    checkpoint file (a `framelab fit` checkpoint or the output of `framelab convert`), or of a
    Hugging Face Qwen3-VL directory given as `hf:DIR` (`read_hf_weights`)."""
    if str(path).startswith(HF_PREFIX):
        return read_hf_weights(str(path), where)
    path = Path(str(path))
    if not path.is_file():
        raise UserError(f"{where}={path}: no such file; give a checkpoint (.ckpt) of `framelab fit` "
                        "or the output of `framelab convert`")
    ckpt = load_torch(path, f"{where}={path}")
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
