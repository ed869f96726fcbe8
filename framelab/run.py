"""`framelab fit|validate|test|predict`: compose the Hydra config, build everything, run the verb.

The command line is checked first (`framelab.config_check`), so mistakes end in one line; then
Hydra's own `main` runs the job (or the sweep, with `-m`), which gives run directories, `--cfg job`
and the sweepers for free. Inside the job: seed, datamodule, LightningModule, callbacks, loggers and
Trainer are instantiated from the config, the resolved config is written to the run directory as
`config.yaml`, and the verb runs. `fit` returns the monitored metric (what a sweeper optimises).
"""
from __future__ import annotations

import errno
import logging
import sys
from pathlib import Path

from framelab.errors import UserError

log = logging.getLogger("framelab")
WRITE_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}
# flags that belong to Hydra itself and take a value
HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun"}
HYDRA_FLAGS = {"-m", "--multirun", "--resolve", "-h", "--help", "--hydra-help", "--shell-completion",
               "-sc", "--version"}


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(hydra flags, overrides) of a command line."""
    flags, overrides, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a in HYDRA_VALUE_FLAGS and i + 1 < len(args) and "=" not in args[i + 1]:
            flags += [a, args[i + 1]]
            i += 2
            continue
        (flags if a.startswith("-") else overrides).append(a)
        i += 1
    return flags, overrides


def run_verb(verb: str, args: list[str]) -> int:
    from framelab.config_check import check, config_dir

    flags, overrides = split_args(args)
    overrides = [o for o in overrides if not o.startswith("verb=")] + [f"verb={verb}"]
    try:
        if not {"-h", "--help", "--hydra-help", "--info"} & set(flags):
            cfg = check(overrides)
            overrides += shared_run_dir(cfg, overrides, flags)
            check_outputs(cfg, overrides, flags)
        directory = str(config_dir())
    except UserError as exc:
        print(f"framelab: error: {exc}", file=sys.stderr)
        return 2
    import hydra

    @hydra.main(config_path=directory, config_name="fit", version_base="1.3")
    def job(cfg):
        try:
            return execute(verb, cfg)
        except UserError as exc:
            print(f"framelab: error: {exc}", file=sys.stderr)
            sys.exit(2)
        except OSError as exc:  # a folder that became unwritable or full mid-run (e.g. the cache)
            if exc.errno not in WRITE_ERRORS or not exc.filename:
                raise
            print(f"framelab: error: cannot write {exc.filename} ({exc.strerror}); free space or "
                  "give folders you can write to (hydra.run.dir, FRAMELAB_CACHE)", file=sys.stderr)
            sys.exit(2)

    saved = sys.argv
    # argv[0] stays the program, so Lightning can re-launch this command for its DDP ranks
    sys.argv = [saved[0] if saved else "framelab", *flags, *overrides]
    try:
        job()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    finally:
        sys.argv = saved
    return 0


def check_outputs(cfg, overrides: list[str], flags: list[str]) -> None:
    """Where the run writes -- its run directory and the data cache -- must be writable, and a
    GPU trainer needs a GPU: each is one line before Hydra starts (which would otherwise fail in
    a traceback creating the directory)."""
    from framelab.errors import check_writable

    given = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    if given and not {"-m", "--multirun"} & set(flags):
        check_writable(given[-1], "hydra.run.dir")
    else:
        check_writable(cfg.paths.root, "paths.root (where run directories are made)")
    check_writable(cfg.paths.cache_dir, "paths.cache_dir (FRAMELAB_CACHE, generated data)")
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"trainer.accelerator={accelerator} but this machine has no usable "
                            "CUDA GPU; use trainer=cpu (or trainer=default, which picks what exists)")


def shared_run_dir(cfg, overrides: list[str], flags: list[str]) -> list[str]:
    """Under torchrun or SLURM every rank must write to one run directory: name it after the
    launcher's job id (a timestamp differs between ranks). Returns an override, or nothing."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or {"-m", "--multirun"} & set(flags):
        return []
    if any(o.startswith("hydra.run.dir=") for o in overrides):
        return []
    job = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if job == "none" and os.environ.get("SLURM_JOB_ID"):
        job = "slurm-" + os.environ["SLURM_JOB_ID"]
    if job == "none":
        raise UserError("a multi-process launch needs one run directory for all ranks: pass "
                        "hydra.run.dir=DIR, or launch with torchrun --rdzv-id=ID (or --standalone)")
    return [f"hydra.run.dir={cfg.paths.root}/{cfg.name}/{job}"]


def resolve_precision(value: str, accelerator: str) -> str:
    import torch

    if value != "auto":
        return value
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu else "32-true"


def build(node, where: str, **kwargs):
    """`hydra.utils.instantiate`, except that a UserError raised while building stays one line
    (Hydra wraps it in a multi-line InstantiationException)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError) and "argument" in str(cause):
            raise UserError(f"{where}: {cause}; check the keys of the {where} config") from None
        raise


def execute(verb: str, cfg):
    import lightning as L
    from hydra.core.hydra_config import HydraConfig
    from lightning.pytorch.utilities.model_helpers import is_overridden
    from omegaconf import OmegaConf

    from framelab.checkpoints import AtomicCheckpointIO, resolve_ckpt_path
    from framelab.kernels import set_backends

    logging.getLogger("lightning.pytorch").propagate = False  # it has its own console handler
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        set_backends(attention=cfg.runtime.attn_backend, kernels=cfg.runtime.kernels)
    except ValueError as exc:
        raise UserError(str(exc)) from exc

    datamodule = build(cfg.data, "data")
    module = build(cfg.module, "module")
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = resolve_precision(trainer_cfg.get("precision", "auto"),
                                                 trainer_cfg.get("accelerator", "auto"))
    loggers = [build(c, "logger") for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    callbacks = [build(c, "callbacks") for c in (cfg.get("callbacks") or {}).values()
                 if c and "_target_" in c]
    trainer = build(trainer_cfg, "trainer", callbacks=callbacks, logger=loggers or False,
                    default_root_dir=str(run_dir), plugins=[AtomicCheckpointIO()])
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir, type(module).__name__)
    if ckpt_path:
        log.warning("resuming from %s", ckpt_path)
    elif verb != "fit" and not getattr(module, "init_from", None):
        log.warning("framelab: %s without ckpt_path: the weights are untrained (random); pass "
                    "ckpt_path=last or a .ckpt", verb)
    log.warning("run directory: %s", run_dir)
    if verb == "fit":
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    elif verb == "validate":
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path)
    elif verb == "test":
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path)
    elif is_overridden("predict_dataloader", module):
        # the module says what to predict (e.g. SAR: classes × steps × orders), the data only
        # supplies what the module needs from it (codebook, grid, decoder)
        datamodule.prepare_data()
        datamodule.setup("predict")
        module.attach_datamodule(datamodule)
        trainer.predict(module, ckpt_path=ckpt_path, return_predictions=False)
    else:
        trainer.predict(module, datamodule=datamodule, ckpt_path=ckpt_path)
    value = trainer.callback_metrics.get(cfg.get("monitor"))
    return float(value) if value is not None else None

