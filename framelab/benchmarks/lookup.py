"""`framelab bench lookup --ckpt CKPT [--samples N] [--json PATH]`: the letter lookup alone.

A "rationale" reply names an option, then gives its letter ("Answer: red B"). This benchmark
measures the second half on its own. On held-out `read` samples (text-only: the scene is
described in words), each question's reply is forced to name the right option ("Answer: red",
earlier turns answered right), and the next token is read: is the right letter the most likely of
A-D? Per question type, with the scene's description in the prompt and without it (the
description repeats option words: "The video shows a red circle ..."). Chance is 25 %. Compare
`val/mcq_named_acc/read/*` of the same run: a model can name the option and still miss its letter.

JSON keys: `letter_given_name` ({"with_description": {qtype: rate}, "without_description": ...}),
`questions` (per type), `samples`.
"""
from __future__ import annotations

import argparse
import os

import torch

from framelab.benchmarks._common import machine, print_table, write_json
from framelab.errors import UserError
from framelab.world.tasks.common import LETTERS


def conversations(split: str, samples: int):
    """(qtype, messages up to the question, answer text, letter) per question of `read` samples,
    with the rationale reply format, in both variants (with and without the description)."""
    from framelab.world.tasks import read

    for index in range(samples):
        sample = read.make(split, index, {"mcq_reply": "rationale"}, render_frames=False)
        conv, turns = sample.conversation, sample.meta["turns"]
        rest = conv[0]["content"].partition("\n")[2]      # the first turn without its description
        for t, turn in enumerate(turns):
            if turn.get("format") != "mcq":
                continue
            upto = [dict(m) for m in conv[:2 * t + 1]]
            bare = [dict(m) for m in upto]
            bare[0]["content"] = rest
            yield turn["qtype"], {"with_description": upto, "without_description": bare}, \
                turn["answer_text"], turn["answer"]


@torch.no_grad()
def measure(model, tok, split: str, samples: int) -> tuple[dict, dict]:
    """({variant: {qtype: rate}}, {qtype: questions}): the right letter's share given the name."""
    from framelab.datamodules.chat import ChatEncoder

    encoder = ChatEncoder(tok)
    letter_ids = []
    for letter in LETTERS:
        ids = tok.encode(" " + letter, add_special_tokens=False).ids
        if len(ids) != 1:
            raise UserError(f"the tokenizer spells ' {letter}' as {len(ids)} tokens; the lookup "
                            "benchmark needs one token per option letter")
        letter_ids.append(ids[0])
    hits: dict = {"with_description": {}, "without_description": {}}
    for qtype, variants, answer_text, letter in conversations(split, samples):
        reply = tok.encode(f"Answer: {answer_text}", add_special_tokens=False).ids
        for variant, messages in variants.items():
            ids, _ = encoder.encode(messages, [], add_generation_prompt=True)
            x = torch.tensor([ids + reply])
            logits = model(x).logits[0, -1, letter_ids]
            right = LETTERS[int(logits.argmax())] == letter
            hits[variant].setdefault(qtype, []).append(float(right))
    return {v: {q: sum(h) / len(h) for q, h in sorted(per.items())} for v, per in hits.items()}, \
        {q: len(h) for q, h in sorted(hits["with_description"].items())}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="framelab bench lookup", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="a video-LLM (or agent) checkpoint")
    p.add_argument("--samples", type=int, default=200, help="read samples (up to 4 questions each)")
    p.add_argument("--split", default="test")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.samples < 1:
        raise UserError(f"--samples {args.samples}: give at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from framelab.agent.command import load_agent

    model, tok = load_agent(args.ckpt)
    rates, counts = measure(model, tok, args.split, args.samples)
    rows = [{"question": q, "questions": counts[q],
             "with description": f"{rates['with_description'][q]:.3f}",
             "without description": f"{rates['without_description'][q]:.3f}"} for q in counts]
    print(f"letter given the right name, {args.split} read questions ({machine()}; chance 0.25)")
    print_table(rows, ["question", "questions", "with description", "without description"])
    write_json(args.json, {"benchmark": "lookup", "ckpt": os.path.abspath(args.ckpt),
                           "letter_given_name": rates, "questions": counts,
                           "samples": args.samples})
    return 0
