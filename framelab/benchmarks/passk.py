"""`framelab bench passk --ckpt CKPT [--task read] [--json PATH]`: is there anything for RL to find?

Rule-based RL can only reinforce right answers the policy already samples. On held-out questions
of one task (the world's val split) this reports, for a video-LLM checkpoint:
- `greedy`: accuracy of the greedy reply (what validation measures);
- `sampled`: mean accuracy of G replies sampled at the RL temperature (what RL's reward sees);
- `pass@G`: the share of questions with at least one right reply among the G;
- `chance_pass@G`: the same for a policy that picks one of the 4 options uniformly, 1 − 0.75^G,
  for multiple-choice tasks.
A pass@G near its chance value means the samples carry little more than guessing: the errors are
what the model believes, not sampling noise, and a policy gradient sharpens them as readily as
the right answers (docs/rl.md, "Learning on the world").

The data and model come from the run's own `config.yaml` (the folder above `checkpoints/`), with
`data.tasks=[--task]`; replies are scored by the `accuracy` reward (framelab/rl/rewards.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from framelab.benchmarks._common import print_table, write_json
from framelab.errors import UserError


def build(ckpt: str, task: str, group: int, max_new_tokens: int):
    from omegaconf import OmegaConf

    from framelab.run import build as instantiate

    path = Path(ckpt)
    config = path.parent.parent / "config.yaml"
    if not path.is_file() or not config.is_file():
        raise UserError(f"--ckpt {ckpt}: expected RUN/checkpoints/NAME.ckpt with RUN/config.yaml "
                        "beside it (a framelab run folder)")
    cfg = OmegaConf.load(config)
    if "VideoLLMModule" not in str(cfg.module.get("_target_", "")):
        raise UserError(f"--ckpt {ckpt}: a {cfg.module.get('_target_')} run; give a video-LLM one")
    cfg.data.tasks = [task]
    cfg.module.init_from, cfg.module.stage = str(path), "rl"
    cfg.module.rl = {**(cfg.module.get("rl") or {}), "rewards": {"accuracy": 1.0},
                     "group_size": group, "max_new_tokens": max_new_tokens}
    dm = instantiate(cfg.data, "data")
    module = instantiate(cfg.module, "module")
    dm.prepare_data()
    dm.setup("validate")
    module.attach_datamodule(dm)
    module.setup("validate")
    return dm, module.eval()


def documents(dm, module, n: int) -> list[dict]:
    docs = []
    for batch in dm.val_dataloader():
        docs += module.prompt_documents(dm.on_after_batch_transfer(batch, 0))
        if len(docs) >= n:
            break
    if not docs:
        raise UserError("no answerable questions in the val split of that task")
    return docs[:n]


@torch.no_grad()
def accuracy(module, docs: list[dict], group: int, temperature: float, chunk: int = 16):
    module.rl_cfg.update(group_size=group, temperature=temperature)
    hits = []
    for i in range(0, len(docs), chunk):
        hits += module.roll_and_score(docs[i:i + chunk]).extra["term/accuracy"]
    return torch.tensor(hits).reshape(-1, group)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="framelab bench passk", description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, nargs="+", help="video-LLM checkpoints to compare")
    p.add_argument("--task", default="read")
    p.add_argument("--questions", type=int, default=160, help="held-out questions")
    p.add_argument("--group", type=int, default=8, help="G samples per question")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    for ckpt in args.ckpt:
        torch.manual_seed(args.seed)          # the sampling generator derives from it
        dm, module = build(ckpt, args.task, args.group, args.max_new_tokens)
        docs = documents(dm, module, args.questions)
        sampled = accuracy(module, docs, args.group, args.temperature)
        greedy = accuracy(module, docs, 1, 1e-6)
        mcq = all(d["meta"].get("format") == "mcq" for d in docs)
        rows.append({"ckpt": ckpt, "questions": len(docs), "greedy": round(greedy.mean().item(), 3),
                     "sampled": round(sampled.mean().item(), 3),
                     f"pass@{args.group}": round(sampled.max(1).values.mean().item(), 3),
                     f"chance_pass@{args.group}": round(1 - 0.75 ** args.group, 3) if mcq else None})
    print_table(rows, list(rows[0]))
    write_json(args.json, {"task": args.task, "temperature": args.temperature, "rows": rows})
    return 0
