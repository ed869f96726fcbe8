"""Helpers for the resume tests: run a VideoTextDataModule for some steps on one rank (or on two
ranks in spawned processes with a gloo group) and record what each rank received."""
from __future__ import annotations

import json
import os
import socket

import torch.multiprocessing as mp

from framelab.datamodules.video_text import VideoTextDataModule


def consume(dm_kwargs: dict, state: dict | None, steps: int | None, epochs: int = 1) -> dict:
    """Iterate the training loader like Lightning does (each batch goes through
    on_before_batch_transfer). steps=None: to the end of `epochs` epochs. Returns per-step sample
    ids, the per-step positions and the final state_dict."""
    dm = VideoTextDataModule(**dm_kwargs)
    dm.setup("fit")
    if state is not None:
        dm.load_state_dict(state)
    loader = dm.train_dataloader()
    out = {"ids": [], "positions": [], "shapes": []}
    done = 0
    for _ in range(epochs):
        for batch in loader:
            batch = dm.on_before_batch_transfer(batch, 0)
            out["ids"].append(batch["sample_ids"])
            out["positions"].append(list(dm.position))
            out["shapes"].append(list(batch["input_ids"].shape))
            done += 1
            if steps is not None and done == steps:
                break
        if steps is not None and done == steps:
            break
    out["state"] = dm.state_dict()
    return out


def _rank_main(rank: int, world: int, port: int, jobs: list, out_dir: str) -> None:
    import torch.distributed as dist
    # this rank was spawned; its DataLoader workers would be spawned too (re-importing everything)
    # unless told otherwise: fork them, as under a normal `python train.py` / torchrun launch
    mp.set_start_method("fork", force=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = [consume(kw, state, steps, epochs) for kw, state, steps, epochs in jobs]
    finally:
        dist.barrier()
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(world: int, jobs: list, out_dir, start_method: str = "spawn") -> list[list[dict]]:
    """Run each job (dm_kwargs, state, steps, epochs) in turn with `consume` on `world` spawned
    ranks (one spawn for all jobs: starting processes is the slow part; "fork" skips the imports).
    Returns, per job, each rank's result."""
    mp.start_processes(_rank_main, args=(world, free_port(), jobs, str(out_dir)), nprocs=world,
                       join=True, start_method=start_method)
    per_rank = []
    for r in range(world):
        with open(os.path.join(out_dir, f"rank{r}.json")) as f:
            per_rank.append(json.load(f))
    return [[per_rank[r][j] for r in range(world)] for j in range(len(jobs))]


def consume_distributed(world: int, dm_kwargs: dict, state, steps, out_dir, epochs: int = 1) -> list[dict]:
    """One job on `world` ranks; returns each rank's result."""
    return run_distributed(world, [(dm_kwargs, state, steps, epochs)], out_dir)[0]
