"""`framelab bench agent_notes --ckpt CKPT [--zoom right|miss] [--questions 120] [--samples 4]
[--json PATH]`: what an agent makes of a zoom, the right one or one that missed.

For each held-out `needle` question (test split, the benchmark's six lengths and five depths) the
expert's trajectory (`framelab.agent.data.expert_trajectory`, no direct answer) is forced up to
and including its first zoom: with `--zoom right` (the default) a zoom on the needle's span; with
`--zoom miss` a zoom on a span away from it, the needle's span listed second by the search (the
expert's miss, whose next call zooms on that span). The agent then writes the next turn (a note
of what the zoom showed, with notes, and a call) once greedily and `--samples` times at
temperature 1. Printed, by question type ("what" / "when"):

- `greedy` / `sampled`: the answer's score (the letter; temporal IoU for "when") from that
  context: what the agent does once the search and zoom are right;
- `distinct`: the share of questions whose samples end in more than one outcome (what
  group-relative RL needs to compare);
- of the greedy notes: `needle` (the note names the needle; for a `check:` note, says yes to
  it), `listed` (the note's list `seen: ...` names the needle; `-` for notes without one),
  `colour` / `shape` / `pair` (the
  share of the named colours, shapes and colour-shape pairs that are in the zoom), `count` (as
  many objects named as the zoom shows); for a `check:` note (`data.note_form=checks`) the named
  objects are those it says yes to, `checks` is the share of its verdicts that are right and
  `count` is `-`;
- `if_named`: the greedy answer's score over the questions whose note names the needle (can
  the agent use a right note?), `-` when no note does;
- `lm_names`: the share of the needle's vision tokens in the zoom whose LM hidden state names
  its colour and its shape through the LM's output head (the argmax over the colour words and
  over the shape words, as the default run's word grounding trains it): whether the tokens the
  note is written from carry the needle's pair in the LM's own words (`-` when no token of the
  zoom is the needle's, as after a miss, or when the tokenizer splits a colour or shape word);
- `zooms`: the share of greedy next calls that zoom again (after a miss, the expert's move);
  `zooms_if_unnamed`: that share over the questions whose note does not name the needle (does
  the agent follow its own note?), `-` when every note does.

After a miss the zoom does not show the needle, so there `needle` is the share of notes that
name an object the zoom does not show, and the scores are those of answering from a wrong span.

An agent trained without notes (`data.notes=false`) writes none: its note figures are 0.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from framelab.agent.data import FRAME_SIZE, NOTE_SEP, SEEN, note_checks
from framelab.benchmarks._common import machine, print_table, write_json
from framelab.errors import UserError
from framelab.world.vocab import COLOUR_NAMES, SHAPES

PARAMS = {"lengths": [64, 128, 256, 512, 1024, 2048], "depths": [0.0, 0.25, 0.5, 0.75, 1.0],
          "when_prob": 0.5}


def note_names(note: str) -> list[str]:
    """The object names of a note's list `seen: a, b` (up to the verdicts of a `both` note; []
    for a note without a list)."""
    if not note.startswith(SEEN):
        return []
    listed = note[len(SEEN):].split(NOTE_SEP)[0]
    return [n.strip() for n in listed.split(",") if n.strip() and n.strip() != "nothing"]


def score_note(note: str, present: list[str], needle: str) -> dict:
    """How a note compares with the objects a zoom shows (`present`, "colour shape"): the
    names it lists (`seen:`) or says yes to (`check:`); `checks` is the share of a `check:`
    note's verdicts that are right (nan for a `seen:` note)."""
    checks = note_checks(note)
    got = [n for n, yes in checks if yes] if checks else note_names(note)
    colours, shapes = {p.split()[0] for p in present}, {p.split()[-1] for p in present}
    n = max(1, len(got))
    listed = note_names(note)
    return {"needle": float(needle in got),
            "listed": float(needle in listed) if note.startswith(SEEN) else float("nan"),
            "colour": sum(g.split()[0] in colours for g in got) / n,
            "shape": sum(g.split()[-1] in shapes for g in got) / n,
            "pair": sum(g in present for g in got) / n,
            "count": float("nan") if checks else float(len(got) == len(present)),
            "checks": float(np.mean([(name in present) == yes for name, yes in checks]))
            if checks else float("nan"), "named": len(got)}


def forced_zoom(ep: dict, rng: np.random.Generator, zoom: str = "right"):
    """(the expert's trajectory up to and including its first zoom, the expert's next turn) for
    an episode: the zoom on the needle's span (`right`) or on a span away from it (`miss`); None
    for `miss` when the video has no span away from the needle's."""
    from framelab.agent.data import expert_trajectory

    traj = expert_trajectory(ep, rng, miss_prob=float(zoom == "miss"), direct_prob=0.0)
    if zoom == "miss":
        if not traj.meta["miss"]:
            return None
        traj.turns.pop()                                        # the finish after the right zoom
    return traj, traj.turns.pop().text


def needle_named(model, prompt, words: torch.Tensor, labels: np.ndarray, needle: tuple[int, int],
                 video_id: int) -> float:
    """The share of the needle's tokens (label ids `needle`: colour, shape) among the last
    video's tokens (`labels`, the merged grid's order) whose LM hidden state names both its
    colour and its shape (`lm_names` in the module docstring); nan when it has none."""
    mine = torch.from_numpy((labels[:, 0] == needle[0]) & (labels[:, 1] == needle[1]))
    if not bool(mine.any()):
        return float("nan")
    ids = torch.tensor([prompt.ids])
    hidden = model.hidden_states(ids, prompt.videos)[0]
    slots = (ids[0] == video_id).nonzero()[:, 0][-len(labels):][mine]
    logits = hidden[slots] @ model.lm.output_weight.t()
    colour = logits[:, words[0, :len(COLOUR_NAMES)]].argmax(1) == needle[0]
    shape = logits[:, words[1, :len(SHAPES)]].argmax(1) == needle[1]
    return float((colour & shape).float().mean())


@torch.no_grad()
def report(model, tok, questions: int, samples: int, seed: int = 0, zoom: str = "right",
           size: int = FRAME_SIZE) -> dict:
    """The figures of the module docstring, per question type, after the right zoom or a miss
    (`zoom`); a question whose video has no span away from the needle's is left out of `miss`."""
    from framelab.agent.data import as_tensor, episode
    from framelab.agent.loop import AgentConfig, answer_of, renderer_for, split_call
    from framelab.agent.rewards import score
    from framelab.agent.tools import zoom_indices
    from framelab.datamodules.perception_labels import token_labels
    from framelab.datamodules.special_tokens import IM_END, TOOL_CALL_END
    from framelab.lightning_modules.videollm import attribute_words
    from framelab.models.generation import decode
    from framelab.models.vision import merged_grid
    from framelab.rl.rollout import suppressed

    r = renderer_for(model, tok)
    try:
        words = attribute_words(tok)
    except UserError:                        # a tokenizer that splits a word: no `lm_names`
        words = None
    gen = torch.Generator().manual_seed(seed)
    rows: dict[str, list[dict]] = {}
    for i in range(questions):
        ep = episode("test", i, {**PARAMS, "size": size})
        forced = forced_zoom(ep, np.random.default_rng([seed, i]), zoom)
        if forced is None:
            continue
        traj, want = forced[0], split_call(forced[1])[0]
        prompt = traj.context(r, as_tensor(ep["frames"]), ep["fps"]).render()
        lm_names = float("nan")
        if words is not None:
            last = traj.turns[-1]                                   # the forced zoom
            shown = zoom_indices(ep["frames"].shape[0], ep["fps"], *last.span,
                                 last.frames).tolist()
            grid = merged_grid(len(shown), *ep["frames"].shape[1:3], model.config.vision)
            labels = token_labels(ep["gt"], ep["meta"]["objects"], shown, grid,
                                  model.config.vision.temporal_patch)
            obj = ep["meta"]["objects"][0]
            lm_names = needle_named(model, prompt, words, labels,
                                    (COLOUR_NAMES.index(obj["colour"]), SHAPES.index(obj["shape"])),
                                    model.video_token_id)
        outcomes, note, zooms = [], "", 0.0
        for k, temperature in enumerate([0.0] + [1.0] * samples):
            out = decode(model, [prompt.ids], AgentConfig.max_new_tokens, videos=[prompt.videos],
                         temperature=temperature, generator=gen,
                         stop_tokens=[r.ids[TOOL_CALL_END], r.ids[IM_END]],
                         suppress_tokens=suppressed(model))
            text, call = split_call(r.decode(out.tokens[0]))
            outcomes.append(round(score(answer_of(call), ep["meta"])["score"], 3))
            if k == 0:
                note, zooms = text, float((call or "").startswith("zoom("))
        needle = "{colour} {shape}".format(**ep["meta"]["objects"][0])
        row = {"greedy": outcomes[0], "sampled": float(np.mean(outcomes[1:] or [0.0])),
               "distinct": float(len(set(outcomes[1:])) > 1),
               **score_note(note, note_names(want), needle), "lm_names": lm_names,
               "zooms": zooms}
        rows.setdefault(ep["meta"]["qtype"], []).append(row)
    out = {}
    for q, v in sorted(rows.items()):
        named = [x["greedy"] for x in v if x["needle"]]
        unnamed = [x["zooms"] for x in v if not x["needle"]]
        out[q] = {key: mean([x[key] for x in v]) for key in v[0]}
        out[q].update(questions=len(v), if_named=float(np.mean(named)) if named else "-",
                      zooms_if_unnamed=float(np.mean(unnamed)) if unnamed else "-")
    return out


def mean(values: list[float]) -> float | str:
    """The mean over the values that are not nan; `-` when none is."""
    kept = [x for x in values if x == x]
    return float(np.mean(kept)) if kept else "-"


def main(argv: list[str]) -> int:
    from framelab.agent.command import load_agent

    p = argparse.ArgumentParser(prog="framelab bench agent_notes",
                                description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="an agent checkpoint (experiment=agent_sft/rl)")
    p.add_argument("--zoom", choices=("right", "miss"), default="right",
                   help="the forced zoom: on the needle's span, or on a span away from it")
    p.add_argument("--questions", type=int, default=120)
    p.add_argument("--samples", type=int, default=4, help="samples at temperature 1 a question")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=FRAME_SIZE,
                   help="frame side in pixels: the one the agent trained at")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.questions < 1 or args.samples < 0:
        raise UserError(f"--questions {args.questions} / --samples {args.samples}: expected at "
                        "least 1 question and 0 or more samples")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_agent(args.ckpt)
    t0 = time.perf_counter()
    result = report(model, tok, args.questions, args.samples, args.seed, args.zoom,
                    args.size)
    columns = ["type", "questions", "greedy", "sampled", "distinct", "needle", "listed", "colour",
               "shape", "pair", "count", "checks", "if_named", "lm_names", "zooms",
               "zooms_if_unnamed"]
    print_table([{"type": q, **{k: (f"{v:.3f}" if isinstance(v, float) else v)
                                for k, v in row.items()}} for q, row in result.items()], columns)
    write_json(args.json, {"by_type": result, "ckpt": args.ckpt, "zoom": args.zoom,
                           "size": args.size,
                           "machine": machine(), "seconds": time.perf_counter() - t0})
    return 0
