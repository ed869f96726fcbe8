"""`framelab bench vniah --ckpt CKPT [--json PATH] [--plot PNG] [--tensorboard DIR]`: V-NIAH.

A heatmap over haystack length (64 to 2048 frames) x needle depth (0 to 1) on the world's
`needle` task (test split), accuracy of, in one run and with the same weights:

- `agent`: the MCR agent (`framelab.agent.loop.run_agent`: an 8-frame overview, then search /
  zoom / finish, up to `--max-turns`, greedy);
- `uniform`: the same model answering at once from `--frames` (16) uniformly sampled frames (a
  forced `finish(` after that overview: one turn, no tools).

Per question: multiple choice ("what") scores 1 for the right letter; "when" counts as right at a
temporal IoU of at least `--iou` (0.5), and its mean tIoU is reported on its own (`tiou_when`).
JSON keys: `lengths`, `depths`, `agent`, `uniform` (cell accuracies, lengths x depths),
`agent_by_length`, `uniform_by_length`, `search_top1_by_length` / `search_top3_by_length` (the
index alone: the share of questions where the first / any of three spans that `search` returns for
the expert's query overlaps the needle), `gain_at_512_plus` (the agent's mean accuracy minus
uniform's over the cells with at least 512 frames), `tiou_when` and `tiou_when_512_plus` (agent
and uniform), `accuracy_what` and `accuracy_what_512_plus` (multiple choice alone),
`turns_mean`, `query_named_when` (the share of "when" questions whose first search names the
asked object word for word), `checks_copied` (the share of the items of the agent's check notes,
`data.note_form=checks`, that name the asked object or option of their place; null without
check notes), `questions_per_cell`, `seconds`, and `questions`: one row per question (`length`,
`depth`, `index`, `kind` what / when, `agent` and `uniform` as scored above). `--plot` writes the
two heatmaps side by side (and their difference); `--tensorboard DIR` logs them as images
(`vniah/heatmaps`).

`--against BASE.json` compares this checkpoint's agent with the agent of an earlier run's JSON on
the same questions (same lengths, depths, questions per cell, split and size; e.g. an RL agent
against its SFT start): the paired difference in accuracy, overall, at >= 512 frames and for
"what" and "when" questions on their own, a 95 % bootstrap interval over questions (2000
resamples, seed 0), and how many questions each agent alone got right. JSON key `against`. A
JSON of other questions is refused before any work.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from framelab.agent.data import FRAME_SIZE
from framelab.benchmarks._common import machine, print_table, write_json
from framelab.errors import UserError


def names_copied(traj, meta: dict) -> dict:
    """Does the agent copy the question's names right? `query` ("when" only): its first search
    names the asked object, word for word (None without a search); `checks`: the share of its
    check notes' items that name the asked object or option of their place (None without one)."""
    from framelab.agent.data import asked_items, note_checks
    from framelab.agent.loop import split_call
    from framelab.agent.tools import ToolError, parse_call

    asked = [name for _, name in asked_items(meta)]
    query, items = None, []
    for turn in traj.turns:
        note, call = split_call(turn.text)
        if query is None and meta.get("format") == "span" and call and call.startswith("search"):
            try:
                query = float(parse_call(call)[1]["query"].strip() == asked[0])
            except ToolError:
                query = 0.0
        named = [name for name, _ in note_checks(note)]
        if named:
            items += [float(i < len(named) and named[i] == a) for i, a in enumerate(asked)]
    return {"query": query, "checks": float(np.mean(items)) if items else None}


def run_cell(model, tok, length: int, depth: float, n: int, offset: int, args) -> dict:
    from framelab.agent.data import as_tensor, episode
    from framelab.agent.data import WHAT_QUERY
    from framelab.agent.loop import AgentConfig, run_agent
    from framelab.agent.rewards import score
    from framelab.agent.tools import Toolbox
    from framelab.evaluation.temporal import temporal_iou

    out = {"agent": [], "uniform": [], "tiou_agent": [], "tiou_uniform": [], "turns": [],
           "search_top1": [], "search_top3": [], "what_agent": [], "what_uniform": [],
           "query_named": [], "checks_copied": [], "questions": []}
    for j in range(n):
        ep = episode(args.split, offset + j, {"lengths": [length], "depths": [depth],
                                              "size": args.size})
        frames = as_tensor(ep["frames"])
        tools = Toolbox(model, tok, frames, ep["fps"], features=args.features)
        agent = run_agent(model, tok, frames, ep["fps"], ep["question"],
                          AgentConfig(max_turns=args.max_turns, overview=args.overview,
                                      index=args.features),
                          toolbox=tools)
        meta = ep["meta"]                       # the index alone, with the expert's query
        obj = meta["objects"][0]
        query = f"{obj['colour']} {obj['shape']}" if meta.get("format") == "span" else WHAT_QUERY
        found = tools.run(f"search({query}, 3)").text.split(", ")
        hits = [temporal_iou(tuple(float(x) for x in f.split("-")), meta["spans"]) > 0
                for f in found]
        out["search_top1"].append(float(hits[0]))
        out["search_top3"].append(float(any(hits)))
        uniform = run_agent(model, tok, frames, ep["fps"], ep["question"],
                            AgentConfig(max_turns=1, overview=args.frames))
        for name, traj in (("agent", agent), ("uniform", uniform)):
            s = score(traj.answer, ep["meta"])
            if "tiou" in s:
                out[f"tiou_{name}"].append(s["tiou"])
                out[name].append(float(s["tiou"] >= args.iou))
            else:
                out[name].append(s["accuracy"])
                out[f"what_{name}"].append(s["accuracy"])
        out["turns"].append(len(agent.turns))
        copied = names_copied(agent, meta)
        for key, value in (("query_named", copied["query"]), ("checks_copied", copied["checks"])):
            if value is not None:
                out[key].append(value)
        out["questions"].append({"length": length, "depth": depth, "index": offset + j,
                                 "kind": "when" if meta.get("format") == "span" else "what",
                                 "agent": out["agent"][-1], "uniform": out["uniform"][-1]})
    return out


def paired_difference(a: list[float], b: list[float], resamples: int = 2000,
                      seed: int = 0) -> dict:
    """mean(a) - mean(b) over paired scores, with a 95 % bootstrap interval (questions resampled
    with replacement) and the counts of pairs where one side alone scored."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired scores need two equal, non-empty lists ({a.size} vs {b.size})")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, d.size, size=(resamples, d.size))
    boot = d[idx].mean(axis=1)
    return {"diff": float(d.mean()), "ci95": [float(np.quantile(boot, 0.025)),
                                              float(np.quantile(boot, 0.975))],
            "better": int((d > 0).sum()), "worse": int((d < 0).sum()), "n": int(d.size)}


SAME = ("lengths", "depths", "questions_per_cell", "split", "size", "iou")  # what fixes the questions


def check_same_questions(header: dict, base: dict, where: str) -> list:
    """`base`'s per-question rows, or UserError when `base` is not a V-NIAH JSON of the questions
    that `header` (this run's SAME keys) asks. Run before any work, and again by `compare`."""
    rows = base.get("questions") if isinstance(base, dict) else None
    if not isinstance(rows, list) or any(base.get(k) != header[k] for k in SAME):
        raise UserError(f"--against {where}: not a V-NIAH JSON of the same questions; expected "
                        f"one written by `framelab bench vniah --json` with "
                        + ", ".join(f"{k}={header[k]}" for k in SAME))
    return rows


def compare(result: dict, base: dict, where: str) -> dict:
    """This run's agent against `base`'s (a V-NIAH JSON) on the same questions (module docstring).
    Raises UserError when `base` holds no per-question rows or other questions."""
    key = lambda q: (q["length"], q["depth"], q["index"])  # noqa: E731
    rows = check_same_questions(result, base, where)
    try:
        theirs = {key(q): float(q["agent"]) for q in rows}
    except (KeyError, TypeError, ValueError):
        raise UserError(f"--against {where}: a 'questions' row lacks length, depth, index or "
                        "agent") from None
    mine = result["questions"]
    if sorted(theirs) != sorted(key(q) for q in mine):
        raise UserError(f"--against {where}: its questions differ from this run's")
    pair = lambda keep: paired_difference(  # noqa: E731
        [q["agent"] for q in mine if keep(q)], [theirs[key(q)] for q in mine if keep(q)])
    parts = {"all": lambda q: True, "512_plus": lambda q: q["length"] >= 512,
             "what": lambda q: q["kind"] == "what", "when": lambda q: q["kind"] == "when"}
    out = {"path": where}
    out.update({name: pair(keep) for name, keep in parts.items() if any(map(keep, mine))})
    return out


def plot(result: dict, path: str | None, tb_dir: str | None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, u = np.array(result["agent"]), np.array(result["uniform"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, data, title, cmap, lim in ((axes[0], a, "agent", "viridis", (0, 1)),
                                       (axes[1], u, f"uniform {result['frames']} frames",
                                        "viridis", (0, 1)),
                                       (axes[2], a - u, "agent - uniform", "RdBu", (-1, 1))):
        im = ax.imshow(data, vmin=lim[0], vmax=lim[1], cmap=cmap, aspect="auto")
        ax.set_title(title)
        ax.set_yticks(range(len(result["lengths"])), [str(x) for x in result["lengths"]])
        ax.set_xticks(range(len(result["depths"])), [f"{d:g}" for d in result["depths"]])
        ax.set_xlabel("needle depth")
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="w" if cmap == "viridis" and data[i, j] < 0.6 else "k")
        fig.colorbar(im, ax=ax)
    axes[0].set_ylabel("haystack frames")
    gain = result["gain_at_512_plus"]
    fig.suptitle(f"V-NIAH: accuracy, {result['questions_per_cell']} questions per cell"
                 + (f"; gain at >= 512 frames {gain:+.3f}" if gain is not None else ""))
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
        print(f"wrote {path}")
    if tb_dir:
        from torch.utils.tensorboard import SummaryWriter
        with SummaryWriter(tb_dir) as w:
            w.add_figure("vniah/heatmaps", fig, 0)
        print(f"logged vniah/heatmaps to {tb_dir}")
    plt.close(fig)


def main(argv: list[str]) -> int:
    from framelab.agent.command import load_agent
    from framelab.agent.loop import AgentConfig

    p = argparse.ArgumentParser(prog="framelab bench vniah", description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="an agent checkpoint (experiment=agent_sft/rl)")
    p.add_argument("--lengths", default="64,128,256,512,1024,2048")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--per-cell", type=int, default=4, help="questions per cell")
    p.add_argument("--frames", type=int, default=16, help="uniform sampling's frames")
    p.add_argument("--overview", type=int, default=8, help="the agent's first observation")
    p.add_argument("--max-turns", type=int, default=AgentConfig.max_turns)
    p.add_argument("--iou", type=float, default=0.5, help="tIoU at which a 'when' answer counts")
    p.add_argument("--split", default="test")
    p.add_argument("--features", choices=("tower", "pixels"), default="tower",
                   help="search features: the tower's clip embeddings, or raw pixels (diagnostic)")
    p.add_argument("--size", type=int, default=FRAME_SIZE,
                   help="frame side in pixels: the one the agent trained at")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--plot", nargs="?", const="vniah.png", default=None,
                   help="PNG of the heatmaps (default vniah.png)")
    p.add_argument("--tensorboard", default=None, help="log the heatmaps here as images")
    p.add_argument("--against", default=None,
                   help="a V-NIAH JSON of the same questions: paired difference of the agents")
    args = p.parse_args(argv)
    try:
        lengths = [int(x) for x in args.lengths.split(",")]
        depths = [float(x) for x in args.depths.split(",")]
    except ValueError:
        raise UserError(f"--lengths {args.lengths} / --depths {args.depths}: expected comma-"
                        "separated numbers, e.g. --lengths 64,512 --depths 0,0.5,1") from None
    if any(not 32 <= n <= 4096 for n in lengths) or any(not 0 <= d <= 1 for d in depths):
        raise UserError("--lengths must lie in 32..4096 frames and --depths in 0..1")
    if args.per_cell < 1:
        raise UserError(f"--per-cell {args.per_cell}: expected at least 1")
    header = {"lengths": lengths, "depths": depths, "questions_per_cell": args.per_cell,
              "split": args.split, "size": args.size, "iou": args.iou}     # the SAME keys
    base = None
    if args.against:
        import json
        try:
            with open(args.against) as f:
                base = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"--against {args.against}: cannot read it as JSON ({e}); expected a "
                            "file written by `framelab bench vniah --json`") from None
        check_same_questions(header, base, args.against)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_agent(args.ckpt)
    t0 = time.perf_counter()
    cells = {}
    for li, n in enumerate(lengths):
        for di, d in enumerate(depths):
            offset = (li * len(depths) + di) * args.per_cell
            cells[n, d] = run_cell(model, tok, n, d, args.per_cell, offset, args)
            print(f"length {n:5d} depth {d:.2f}: agent {np.mean(cells[n, d]['agent']):.2f} "
                  f"uniform {np.mean(cells[n, d]['uniform']):.2f}", flush=True)
    grid = lambda key: [[float(np.mean(cells[n, d][key])) for d in depths] for n in lengths]  # noqa: E731
    pool = lambda key, keep: [x for (n, _), c in cells.items() if keep(n) for x in c[key]]  # noqa: E731
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    agent, uniform = grid("agent"), grid("uniform")
    long = lambda n: n >= 512  # noqa: E731
    every = lambda n: True  # noqa: E731
    a512, u512 = pool("agent", long), pool("uniform", long)
    result = {
        **header, "frames": args.frames, "agent": agent, "uniform": uniform,
        "agent_by_length": [float(np.mean(r)) for r in agent],
        "uniform_by_length": [float(np.mean(r)) for r in uniform],
        "agent_mean": mean(pool("agent", every)), "uniform_mean": mean(pool("uniform", every)),
        "gain_at_512_plus": (mean(a512) - mean(u512)) if a512 else None,
        "accuracy_what": {"agent": mean(pool("what_agent", every)),
                          "uniform": mean(pool("what_uniform", every))},
        "accuracy_what_512_plus": {"agent": mean(pool("what_agent", long)),
                                   "uniform": mean(pool("what_uniform", long))},
        "tiou_when": {"agent": mean(pool("tiou_agent", every)),
                      "uniform": mean(pool("tiou_uniform", every))},
        "tiou_when_512_plus": {"agent": mean(pool("tiou_agent", long)),
                               "uniform": mean(pool("tiou_uniform", long))},
        "turns_mean": mean(pool("turns", every)),
        "query_named_when": mean(pool("query_named", every)),
        "checks_copied": mean(pool("checks_copied", every)),
        "search_top1_by_length": [mean([x for d in depths for x in cells[n, d]["search_top1"]])
                                  for n in lengths],
        "search_top3_by_length": [mean([x for d in depths for x in cells[n, d]["search_top3"]])
                                  for n in lengths],
        "index": args.features, "ckpt": args.ckpt, "machine": machine(), "seconds": time.perf_counter() - t0,
        "questions": [q for c in cells.values() for q in c["questions"]],
    }
    print_table([{"frames": n, "agent": f"{a:.3f}", "uniform": f"{u:.3f}", "search@1": f"{s1:.2f}",
                  "search@3": f"{s3:.2f}"}
                 for n, a, u, s1, s3 in zip(lengths, result["agent_by_length"],
                                            result["uniform_by_length"],
                                            result["search_top1_by_length"],
                                            result["search_top3_by_length"])],
                ["frames", "agent", "uniform", "search@1", "search@3"])
    g = result["gain_at_512_plus"]
    print(f"gain_at_512_plus: {g:+.3f}" if g is not None else "gain_at_512_plus: no cell >= 512")
    print(f"tiou_when: agent {result['tiou_when']['agent']}, "
          f"uniform {result['tiou_when']['uniform']}")
    print(f"accuracy_what: agent {result['accuracy_what']['agent']}, "
          f"uniform {result['accuracy_what']['uniform']}")
    print(f"query_named_when: {result['query_named_when']}, "
          f"checks_copied: {result['checks_copied']}")
    if base is not None:
        result["against"] = compare(result, base, args.against)
        for part, c in result["against"].items():
            if part != "path":
                print(f"against {args.against} ({part}): agent {c['diff']:+.3f} "
                      f"[95% {c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}], right here only "
                      f"{c['better']}, there only {c['worse']}, of {c['n']}")
    if args.plot or args.tensorboard:
        plot(result, args.plot, args.tensorboard)
    write_json(args.json, result)
    return 0
