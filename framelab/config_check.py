"""Validate a command line against the Hydra config tree before anything runs.

Hydra's own errors are multi-line tracebacks; a user who mistypes an experiment, a key or a value
gets one line here instead, naming the key and what would be right. Checks, in order:
unknown config-group choices (with the valid ones), overrides that do not parse, composition
errors (unknown keys, with close matches), values of the wrong type (against the composed
default), keys that moved (named with their new place), a `model` override under a module that
does not read the `model` group, missing required values (`???`), and a checkpoint path that does
not exist.
In a multirun sweep each swept key is checked with its first value.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from framelab.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
ROOT_CONFIG = "fit"


def config_dir() -> Path:
    if not (CONFIG_DIR / f"{ROOT_CONFIG}.yaml").exists():
        raise UserError(f"config tree not found at {CONFIG_DIR}; install framelab from its source "
                        "checkout with `pip install -e .` so configs/ sits beside the package")
    return CONFIG_DIR


def group_choices(group: str) -> list[str]:
    folder = config_dir() / group
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


def _first_values(overrides: list[str]) -> list[tuple[str, str, object]]:
    """Parse overrides into (key, value as text, typed value); a sweep (a,b,c / range / choice)
    is represented by its first value."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # noqa: BLE001 - hydra raises OverrideParseException and others
        raise UserError(f"cannot parse the overrides: {_one_line(exc)}") from exc
    out = []
    for o in parsed:
        if o.is_sweep_override():
            text, typed = next(iter(o.sweep_string_iterator())), next(iter(o.sweep_iterator()))
        else:
            text, typed = o.get_value_element_as_str(), o.value()
        out.append((o.get_key_element(), text, typed))
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).split("\nfull_key")[0]
    return re.sub(r"\s+", " ", text).strip()


def _missing_keys(cfg, prefix: str = "") -> list[str]:
    """Keys whose value is `???`, found without resolving any interpolation."""
    out = []
    for k in cfg.keys():
        node, full = cfg._get_node(k), f"{prefix}.{k}" if prefix else str(k)
        if isinstance(node, DictConfig):
            out += _missing_keys(node, full)
        elif node._is_missing():
            out.append(full)
    return out


def _all_keys(cfg, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            full = f"{prefix}.{k}" if prefix else str(k)
            keys.append(full)
            keys += _all_keys(cfg._get_node(k), full)
    return keys


def _set_at_run_time(cfg: DictConfig, key: str) -> bool:
    """Is `key`'s value an interpolation of hydra's run-time values (`${hydra:...}`)?"""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False) if parent else cfg
    if not isinstance(node, DictConfig):
        return False
    raw = node._get_node(leaf)._value() if node._get_node(leaf) is not None else None
    return isinstance(raw, str) and "${hydra:" in raw


def _type_problem(default, parsed) -> str | None:
    """Why `parsed` (a typed command-line value) does not fit the default's type, or None."""
    if parsed is None:
        return None
    if isinstance(default, bool):
        ok = isinstance(parsed, bool)
        expected = "true or false"
    elif isinstance(default, int):
        ok = isinstance(parsed, int) and not isinstance(parsed, bool)
        expected = "an integer"
    elif isinstance(default, float):
        ok = isinstance(parsed, (int, float)) and not isinstance(parsed, bool)
        expected = "a number"
    else:
        return None
    if ok:
        return None
    return f"expected {expected} (default {default!r}), got {parsed!r}"


# keys that moved: the old spelling ends in one line naming the new one
MOVED = {"model.attn_backend": "runtime.attn_backend", "model.kernels": "runtime.kernels",
         "module.vision": "model.vision"}


def _moved(key: str) -> str | None:
    for old, new in MOVED.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return None


def _unused_model_group(cfg: DictConfig, pairs) -> None:
    """A `model=`/`model.` override under a module that does not read the `model` group (SAR's
    model is module.model) would be silently ignored: refuse it."""
    touched = [k.lstrip("+~") for k, _, _ in pairs]
    touched = [k for k in touched if k == "model" or k.startswith("model.")]
    if not touched or "module" not in cfg:
        return
    if "${model" in OmegaConf.to_yaml(cfg.module, resolve=False):
        return
    raise UserError(f"{touched[0]}: this experiment's module ({cfg.module.get('_target_', '?')}) does "
                    "not use the `model` group; set its model under module.model instead")


def _model_from_hf(cfg: DictConfig, pairs) -> None:
    """`init_from=hf:DIR` takes the architecture from the directory's config.json, so a
    `model=`/`model.` override would be ignored: refuse it."""
    init = str(cfg.get("init_from") or "")
    touched = [k.lstrip("+~") for k, _, _ in pairs]
    touched = [k for k in touched if k == "model" or k.startswith("model.")]
    if init.startswith("hf:") and touched:
        raise UserError(f"{touched[0]}: init_from={init} trains the checkpoint's own architecture "
                        "(its config.json); drop the model overrides")


def _compose(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(ROOT_CONFIG, overrides=overrides)


def check(overrides: list[str]) -> DictConfig:
    """Compose the config the way the run will; raise UserError naming the first problem."""
    groups = {p.name for p in config_dir().iterdir() if p.is_dir()}
    pairs = _first_values(overrides)
    flat, group_overrides = [], []
    for key, value, _ in pairs:
        bare = key.lstrip("+~")
        if bare == "hydra" or bare.startswith("hydra."):
            continue
        text = f"{key}={value}" if not key.startswith("~") or value else key
        flat.append(text)
        if bare in groups and not key.startswith("~"):
            choices = group_choices(bare)
            if value not in choices:
                raise UserError(f"unknown {bare} {value!r}; valid choices for {bare}=: "
                                f"{', '.join(choices)}")
            group_overrides.append(text)
    base = _safe_compose(group_overrides)
    for key, _, typed in pairs:
        bare = key.lstrip("+~")
        if bare in groups or key.startswith(("+", "~")) or bare.startswith("hydra"):
            continue
        if bare in _all_keys(base) and _set_at_run_time(base, bare):
            raise UserError(f"{bare} is set when the run starts; hydra.run.dir=DIR picks the "
                            "run's directory (paths.root=DIR the folder runs go under)")
        if OmegaConf.select(base, bare, default="__absent__",
                            throw_on_resolution_failure=False) == "__absent__":
            if _moved(bare):
                raise UserError(f"{bare} is now {_moved(bare)}")
            near = difflib.get_close_matches(bare, _all_keys(base), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise UserError(f"unknown config key {bare!r}{hint} (use +{bare}=... to add a key)")
        node = OmegaConf.select(base, bare, throw_on_resolution_failure=False)
        problem = _type_problem(node, typed) if not isinstance(node, DictConfig) else None
        if problem:
            raise UserError(f"{bare}: {problem}")
    cfg = _safe_compose(flat)
    _unused_model_group(cfg, pairs)
    _model_from_hf(cfg, pairs)
    missing = _missing_keys(cfg)
    if missing:
        raise UserError(f"required config value(s) not set: {', '.join(missing)} "
                        "(set them on the command line, e.g. name=my_run, or in the experiment)")
    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "last") and not Path(str(ckpt)).exists():
        raise UserError(f"ckpt_path={ckpt}: no such file; give an existing .ckpt, or `last` to "
                        "resume the newest run of this experiment")
    return cfg


def _safe_compose(overrides: list[str]) -> DictConfig:
    try:
        return _compose(overrides)
    except Exception as exc:  # noqa: BLE001 - hydra's composition errors have many types
        message = _one_line(exc)
        match = re.search(r"Could not override '([^']+)'", message)
        if match:
            raise UserError(f"unknown config key {match.group(1)!r} (use +{match.group(1)}=... "
                            "to add a key)") from exc
        raise UserError(f"invalid configuration: {message}") from exc
