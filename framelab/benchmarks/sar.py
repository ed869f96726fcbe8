"""`framelab bench sar`: images/s and latency of AR, SAR (KV cache) and MAR-like (no cache)
generation at equal batch size, in one run, with quality beside each row.

Rows (same model, same batch, same sampling settings):
- AR: `raster-N-fixed` with the encoder KV cache, one token per step (N steps);
- SAR-K: `random-K-<interval>` with the cache, for K in --steps;
- MAR-like-K: the same partitions *without* the cache: every step re-encodes the class token and
  all tokens generated so far (the cost profile of MAR's bidirectional re-encoding). Its tokens
  are identical to SAR-K's for the same seed (tested), so its quality is SAR-K's.
- AR-model (with --ar-ckpt): a model trained on raster-N-fixed only, same budget.
Timing: `--repeat` rounds; each round times every row once, in turn (so a busy machine slows all
rows alike); the median per row is reported. images/s = batch / latency.
Ratios (JSON): speedup_vs_ar_16 = images/s of SAR-16 / AR; speedup_vs_mar_16 = SAR-16 / MAR-like-16.
Quality (with --ckpt and --eval-samples > 0): FID, KID, precision/recall (k=3) and class
consistency from `framelab.benchmarks._sar_eval` (local features; chance consistency 1/40).
Without --ckpt the model has random weights of the shape given by --grid etc. (speed only).
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from framelab.benchmarks._common import machine, print_table, write_json


def parse_args(argv):
    p = argparse.ArgumentParser(prog="framelab bench sar", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", help="checkpoint of `framelab fit experiment=sar` (else random weights)")
    p.add_argument("--ar-ckpt", help="checkpoint of an AR-only run (module.partitions=[raster-N-fixed])")
    p.add_argument("--steps", default="4,8,16,32,64", help="SAR / MAR-like step counts")
    p.add_argument("--interval", default="cosine", choices=["fixed", "cosine", "random"])
    p.add_argument("--batch", type=int, default=32, help="images per generate call (all rows)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--eval-samples", type=int, default=512, help="images per row for quality; 0 = none")
    p.add_argument("--cache-dir", default=os.environ.get("FRAMELAB_CACHE", "data_cache"),
                   help="where the feature classifier is cached (default: $FRAMELAB_CACHE or data_cache)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--grid", type=int, default=16, help="random weights: tokens per image side")
    p.add_argument("--codebook", type=int, default=256, help="random weights: codebook size")
    p.add_argument("--temperature", type=float, help="sampling (default: configs/module/sar.yaml)")
    p.add_argument("--top-k", type=int, help="sampling (default: configs/module/sar.yaml)")
    p.add_argument("--cfg-scale", type=float, help="sampling (default: configs/module/sar.yaml)")
    p.add_argument("--cfg-schedule", choices=["constant", "linear"], help="sampling (default: yaml)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--plot", help="write quality-vs-steps and speed-vs-steps here (.png)")
    return p.parse_args(argv)


def module_defaults(key: str) -> dict:
    """A section of configs/module/sar.yaml (the documented defaults)."""
    from omegaconf import OmegaConf

    from framelab.config_check import config_dir

    return OmegaConf.to_container(OmegaConf.load(config_dir() / "module" / "sar.yaml")[key])


def sampling_config(args):
    from framelab.models.sar import SamplingConfig

    cfg = module_defaults("sampling")
    for key in ("temperature", "top_k", "cfg_scale", "cfg_schedule"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    return SamplingConfig(**cfg)


def random_module(grid: int, codebook: int):
    from framelab.lightning_modules.sar import SARGenModule

    cfg = module_defaults("model")
    cfg.update(codebook_size=codebook, grid=[grid, grid], num_classes=48)
    torch.manual_seed(0)
    return SARGenModule(model=cfg).eval()


def plan(n_tokens: int, steps: list[int], interval: str, has_ar_model: bool):
    rows = [{"row": "AR", "partition": "raster-N-fixed", "steps": n_tokens, "cache": True,
             "model": "main"}]
    for k in (k for k in steps if k <= n_tokens):
        rows.append({"row": f"SAR-{k}", "partition": f"random-{k}-{interval}", "steps": k,
                     "cache": True, "model": "main"})
    for k in (k for k in steps if k <= n_tokens):
        rows.append({"row": f"MAR-like-{k}", "partition": f"random-{k}-{interval}", "steps": k,
                     "cache": False, "model": "main"})
    if has_ar_model:
        rows.append({"row": "AR-model", "partition": "raster-N-fixed", "steps": n_tokens,
                     "cache": True, "model": "ar"})
    return rows


def time_rows(rows, models, batch: int, repeat: int) -> None:
    labels = torch.arange(batch) % 40
    times = {r["row"]: [] for r in rows}
    for r in rows:                       # warm-up round
        models[r["model"]].generate(labels, r["partition"], seed=0, use_cache=r["cache"])
    for i in range(repeat):
        for r in rows:
            t0 = time.perf_counter()
            models[r["model"]].generate(labels, r["partition"], seed=i, use_cache=r["cache"])
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[r["row"]].append(time.perf_counter() - t0)
    for r in rows:
        latency = sorted(times[r["row"]])[len(times[r["row"]]) // 2]
        r["latency_s"] = round(latency, 4)
        r["images_per_s"] = round(batch / latency, 2)


def add_quality(rows, models, args) -> dict | None:
    from framelab.benchmarks._sar_eval import Evaluator

    main = models["main"]
    ev = Evaluator(image_size=main.decode(torch.zeros(1, main.fmt_config.num_tokens,
                                                      dtype=torch.long)).shape[-1],
                   n=args.eval_samples, cache_dir=args.cache_dir)
    done: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["model"], r["partition"])
        if key not in done:
            done[key] = ev.evaluate(models[r["model"]], r["partition"])
        q = done[key]
        r.update(fid=round(q["fid"], 2), kid=round(q["kid"], 4), precision=round(q["precision"], 3),
                 recall=round(q["recall"], 3), class_consistency=round(q["class_consistency"], 3))
    return ev.reconstruction_row(models["datamodule"])


def plot(rows, path: str, n_tokens: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sar = [r for r in rows if r["row"].startswith("SAR-")]
    mar = [r for r in rows if r["row"].startswith("MAR-like-")]
    ar = next(r for r in rows if r["row"] == "AR")
    arm = next((r for r in rows if r["row"] == "AR-model"), None)
    quality = [("fid", "FID (local features, lower is better)"),
               ("class_consistency", "class consistency (chance 0.025)")] if "fid" in ar else []
    fig, axes = plt.subplots(1, len(quality) + 1, figsize=(5 * (len(quality) + 1), 4))
    axes = list(axes) if quality else [axes]
    for ax, (key, label) in zip(axes, quality):
        ax.plot([r["steps"] for r in sar], [r[key] for r in sar], "o-", label="SAR, random order")
        ax.plot([ar["steps"]], [ar[key]], "s", label="AR order, same model")
        if arm:
            ax.plot([arm["steps"]], [arm[key]], "^", label="AR-only model, same budget")
        ax.set_ylabel(label)
    ax = axes[-1]
    ax.plot([r["steps"] for r in sar], [r["images_per_s"] for r in sar], "o-", label="SAR, KV cache")
    ax.plot([r["steps"] for r in mar], [r["images_per_s"] for r in mar], "o-",
            label="MAR-like, no cache")
    ax.axhline(ar["images_per_s"], color="k", ls=":", label=f"AR ({n_tokens} steps, cache)")
    ax.set_yscale("log")
    ax.set_ylabel("images / s")
    for ax, title in zip(axes, [q[0] for q in quality] + ["speed"]):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("generation steps")
        ax.set_title(f"{title} vs steps")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.ckpt:
        from framelab.benchmarks._sar_eval import load_run
        module, datamodule = load_run(args.ckpt)
    else:
        module, datamodule = random_module(args.grid, args.codebook), None
    models = {"main": module.to(device), "datamodule": datamodule}
    if args.ar_ckpt:
        from framelab.benchmarks._sar_eval import load_run
        models["ar"] = load_run(args.ar_ckpt)[0].to(device)
    for key in ("main", "ar"):
        if key in models:                  # the same sampling for every row and checkpoint
            models[key].sampling = sampling_config(args)
    n = module.fmt_config.num_tokens
    rows = plan(n, [int(k) for k in args.steps.split(",")], args.interval, "ar" in models)
    with torch.inference_mode():
        time_rows(rows, models, args.batch, args.repeat)
        recon = add_quality(rows, models, args) if args.ckpt and args.eval_samples > 0 else None
    by = {r["row"]: r for r in rows}
    ratios = {}
    if "SAR-16" in by:
        ratios["speedup_vs_ar_16"] = round(by["SAR-16"]["images_per_s"] / by["AR"]["images_per_s"], 2)
        ratios["speedup_vs_mar_16"] = round(by["SAR-16"]["images_per_s"]
                                            / by["MAR-like-16"]["images_per_s"], 2)
    cfg = module.fmt_config
    print(f"machine: {machine()}; grid {cfg.grid} = {n} tokens, batch {args.batch}, "
          f"sampling {module.sampling}, "
          f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M parameters")
    cols = ["row", "partition", "steps", "cache", "images_per_s", "latency_s"]
    if "fid" in rows[0]:
        cols += ["fid", "kid", "precision", "recall", "class_consistency"]
    print_table(rows, cols)
    if recon:
        print(f"VQ reconstructions of real test images (the floor): FID {recon['fid']:.2f}, "
              f"class consistency {recon['class_consistency']:.3f}")
    for k, v in ratios.items():
        print(f"{k}: {v}")
    write_json(args.json, {"machine": machine(), "grid": list(cfg.grid), "batch": args.batch,
                           "rows": rows, **ratios,
                           "vq_reconstruction": recon, "checkpoint": args.ckpt,
                           "ar_checkpoint": args.ar_ckpt})
    if args.plot:
        plot(rows, args.plot, n)
    return 0
