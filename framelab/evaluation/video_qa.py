"""VideoQAEvaluator: answers and scores the questions of a packed video-text batch, for any model
with `MultimodalLM`'s interface (`lm.logits`, `generate_multimodal`); it knows nothing of Lightning.

Answering (`evaluate`), per assistant reply of the batch (`documents`):
- multiple-choice questions with a bare-letter reply are scored by option letter when
  `mcq="score"` and the tokenizer spells A-D as one token each: the letter with the highest logit
  right after the prompt, read from the hidden states of the caller's loss forward pass;
- every other multiple-choice question (`mcq="generate"`, a "rationale" reply "Answer: red B", or
  letters that are not single tokens) is answered by greedy cached generation, and so are open and
  "when" questions when `generate` is true (else they are skipped). Captions and turns without a
  record are neither answered nor scored.

Scoring (`score`), metric names:
- `<split>/mcq_acc/<task>`: the letter `extract_choice` reads (Video-MME style) is right; the
  denominator is every multiple-choice question answered above, unanswered = wrong;
- `<split>/mcq_named_acc/<task>` ("rationale" replies only): the option text the reply names
  (`extract_named`) exact-matches the right option's text, whatever letter follows;
- `<split>/open_acc/<task>`: exact match (`exact.normalize`: case, outer spaces, a leading answer
  prefix and a trailing period are forgiven);
- `<split>/tiou/<task>`: temporal IoU of a "when" reply's span, 0 when it names none;
- `<split>/accuracy`: all multiple-choice and open questions together.
The three accuracies also come per question type (`<split>/mcq_acc/<task>/<qtype>`, e.g.
`describe/colour`).

The metrics are torchmetrics (sums only), created on first use on this module's device and kept in
an `nn.ModuleDict`, so they follow the caller's `.to(device)`; `compute()` reduces them over a
data-parallel group (every process must call it) and resets them.

Config (`evaluation_config`): `mcq` ("score" | "generate"), `generate` (answer open and "when"
questions), `max_new_tokens`, `log_samples` (question/reply/reference triples in `samples_text`).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from framelab.datamodules.special_tokens import IM_END, PAD, VIDEO_PAD
from framelab.errors import UserError
from framelab.evaluation.choice import ChoiceAccuracy, extract_choice, extract_named
from framelab.evaluation.exact import ExactMatch, HitRate, exact_match
from framelab.evaluation.temporal import TemporalIoU
from framelab.models.generation import generate_multimodal

DEFAULTS = {"mcq": "score", "generate": True, "max_new_tokens": 12, "log_samples": 4}
MCQ_MODES = ("score", "generate")   # option letters by logit after the prompt | greedy reply
LETTERS = "ABCD"
ANSWERED = ("mcq", "open", "span")  # formats that are answered and scored
KINDS = {"mcq_acc": ChoiceAccuracy, "mcq_named_acc": ExactMatch, "open_acc": ExactMatch,
         "tiou": TemporalIoU, "accuracy": HitRate}   # metric kind by the name after the split


def evaluation_config(cfg: dict | None) -> dict:
    """The evaluation settings over their defaults; a bad key or mode is a one-line UserError."""
    cfg = {**DEFAULTS, **(cfg or {})}
    if set(cfg) - set(DEFAULTS):
        raise UserError(f"module.evaluation has unknown keys {sorted(set(cfg) - set(DEFAULTS))}; "
                        f"valid: {', '.join(DEFAULTS)}")
    if cfg["mcq"] not in MCQ_MODES:
        raise UserError(f"module.evaluation.mcq={cfg['mcq']!r}; choose one of "
                        f"{', '.join(MCQ_MODES)}")
    return cfg


def letter_reply(meta: dict) -> bool:
    """A multiple-choice question whose reference reply is the bare letter (scorable)."""
    return meta.get("format") == "mcq" and meta.get("reply", "letter") == "letter"


def data_parallel() -> bool:
    """Whether this process is one of several in a torch.distributed group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


class VideoQAEvaluator(nn.Module):
    def __init__(self, tokens: dict[str, int], tokenizer=None, config: dict | None = None,
                 step_runs: bool = False):
        """`tokens`: the ids of {"video_pad", "pad", "im_end"}; `tokenizer`: an HF
        `tokenizers.Tokenizer` (None: replies decode to their token ids); `config`: see
        `evaluation_config`; `step_runs`: a video's placeholders form one run per temporal step
        of 2 frames (Qwen3-VL's prompt layout, data.video_layout=qwen3_vl), not one run."""
        super().__init__()
        self.step_runs = step_runs
        self.tokens = {k: int(tokens[k]) for k in (VIDEO_PAD, PAD, IM_END)}
        self.tokenizer = tokenizer
        self.config = evaluation_config(config)
        self.metrics = nn.ModuleDict()
        self.register_buffer("anchor", torch.zeros(0), persistent=False)   # where metrics live

    # ---- documents --------------------------------------------------------------------------
    def documents(self, batch) -> list[dict]:
        """Per assistant reply of every sample: the prompt ids up to the reply (earlier turns and
        their reference replies included), the sample's videos, the reference reply ids, the meta
        of that turn (`meta["turns"][j]` over the sample's meta for multi-question samples), and
        where the reply starts in the batch (`row`, `start`)."""
        ids, labels = batch["input_ids"], batch["labels"]
        cu = batch.get("cu_seqlens")
        spans = ([(0, int(cu[i]), int(cu[i + 1])) for i in range(len(cu) - 1)] if cu is not None
                 else [(r, 0, ids.shape[1]) for r in range(ids.shape[0])])
        videos, metas, docs = iter(batch.get("videos") or []), iter(batch.get("meta") or []), []
        for row, lo, hi in spans:
            seq, lab = ids[row, lo:hi].tolist(), labels[row, lo:hi].tolist()
            runs = sum(1 for i, t in enumerate(seq) if t == self.tokens[VIDEO_PAD]
                       and (i == 0 or seq[i - 1] != t))
            vids = []
            while runs > 0:                  # one run per video, or per 2 frames (step_runs)
                vids.append(next(videos))
                runs -= vids[-1].shape[0] // 2 if self.step_runs else 1
            starts = [i for i, t in enumerate(lab) if t != -100 and (i == 0 or lab[i - 1] == -100)]
            if not starts:                                # padding document
                continue
            meta = next(metas, {})
            turns = meta.get("turns") or [{}]
            for j, start in enumerate(starts):
                end = next((i for i in range(start, len(lab)) if lab[i] == -100), len(lab))
                # a later reply with no turn record (e.g. real multi-turn data) is not scored
                turn = turns[j] if j < len(turns) else {"format": None}
                docs.append({"prompt": seq[:start], "videos": vids, "meta": {**meta, **turn},
                             "reference": lab[start:end], "row": row, "start": lo + start})
        return docs

    def decode(self, ids: list[int]) -> str:
        """Text of token ids, end-of-turn and padding dropped (the ids themselves without a
        tokenizer)."""
        ids = [t for t in ids if t not in (self.tokens[IM_END], self.tokens[PAD])]
        if self.tokenizer is None:
            return " ".join(map(str, ids))
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ---- answering --------------------------------------------------------------------------
    def letter_ids(self) -> list[int] | None:
        """Token ids of the option letters A-D when each is one token (else None: generate)."""
        if self.tokenizer is None:
            return None
        enc = [self.tokenizer.encode(c, add_special_tokens=False).ids for c in LETTERS]
        return [e[0] for e in enc] if all(len(e) == 1 for e in enc) else None

    def choose_letters(self, model, hidden: torch.Tensor, docs: list[dict]) -> list[str]:
        """Per document, the option letter with the highest logit right after the prompt."""
        letters = torch.tensor(self.letter_ids(), device=hidden.device)
        h = torch.stack([hidden[d["row"], d["start"] - 1] for d in docs])
        logits = model.lm.logits(h)[:, letters]
        return [LETTERS[i] for i in logits.argmax(-1).tolist()]

    def answer(self, model, docs: list[dict]) -> list[str]:
        """Greedy cached replies to the documents' prompts, decoded."""
        out = generate_multimodal(model, [d["prompt"] for d in docs], [d["videos"] for d in docs],
                                  self.config["max_new_tokens"], stop_tokens=[self.tokens[IM_END]],
                                  pad_id=self.tokens[PAD])
        return [self.decode(o) for o in out]

    def evaluate(self, model, batch, hidden: torch.Tensor | None, split: str):
        """Answer the batch's questions (see the module docstring), update the `split` metrics and
        return (documents answered, their replies). `hidden`: the final hidden states of `batch`
        (used only for option-letter scoring)."""
        docs = self.documents(batch)
        scored = self.config["mcq"] == "score" and self.letter_ids() is not None
        by_score = [d for d in docs if scored and letter_reply(d["meta"])]
        rest = [d for d in docs if not any(d is b for b in by_score)
                and d["meta"].get("format") in ANSWERED]
        if not self.config["generate"]:                   # MCQ replies are always answered
            rest = [d for d in rest if d["meta"].get("format") == "mcq"]
        docs = by_score + rest
        replies = (self.choose_letters(model, hidden, by_score) if by_score else []) + (
            self.answer(model, rest) if rest else [])
        self.score(split, docs, replies)
        return docs, replies

    def predictions(self, model, batch) -> list[dict]:
        """A generated reply to every assistant turn of the batch, with its key, task and answer."""
        docs = self.documents(batch)
        replies = self.answer(model, docs) if docs else []
        return [{"key": d["meta"].get("key"), "task": d["meta"].get("task"), "reply": r,
                 "answer": d["meta"].get("answer")} for d, r in zip(docs, replies)]

    # ---- scoring ----------------------------------------------------------------------------
    def metric(self, name: str) -> nn.Module:
        """The metric `name` (`<split>/<kind>/...`), created on first use."""
        key = name.replace("/", "__")
        if key not in self.metrics:
            self.metrics[key] = KINDS[name.split("/")[1]]().to(self.anchor.device)
        return self.metrics[key]

    def score(self, split: str, docs: list[dict], replies: list[str]) -> None:
        """Update the `split` metrics with one reply per document (see the module docstring)."""
        for d, reply in zip(docs, replies):
            meta = d["meta"]
            fmt, answer = meta.get("format"), str(meta.get("answer", ""))
            if fmt == "span":
                self.metric(f"{split}/tiou/{meta.get('task') or 'unknown'}").update(
                    [reply], [meta.get("spans", [])])
                continue
            if fmt == "open":
                self.count(split, "open_acc", meta, reply, answer)
                hit = exact_match(reply, answer)
            elif fmt == "mcq":
                self.count(split, "mcq_acc", meta, reply, answer)
                hit = extract_choice(reply) == answer
            else:
                continue
            self.metric(f"{split}/accuracy").update([hit])
            if fmt == "mcq" and meta.get("reply") == "rationale":   # named the right option?
                self.count(split, "mcq_named_acc", meta, extract_named(reply) or "",
                           meta.get("answer_text"))

    def count(self, split: str, kind: str, meta: dict, reply: str, answer) -> None:
        """Update `<split>/<kind>/<task>` and, for typed questions, `.../<task>/<qtype>`."""
        key = f"{split}/{kind}/{meta.get('task') or 'unknown'}"
        for k in [key] + ([f"{key}/{meta['qtype']}"] if meta.get("qtype") else []):
            self.metric(k).update([reply], [answer])

    def compute(self) -> dict[str, torch.Tensor]:
        """Every metric updated since the last call, by name, reduced over a data-parallel group
        (each process then holds the same names, in the same order), then reset."""
        names = sorted(k.replace("__", "/") for k, m in self.metrics.items() if m.update_called)
        if data_parallel():                               # a task seen by one process only
            every = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(every, names)
            names = sorted(set().union(*every))
        out = {}
        for name in names:
            m = self.metric(name)
            with warnings.catch_warnings():               # no update here, some elsewhere
                warnings.filterwarnings("ignore", message=".*before the ``update``")
                out[name] = m.compute()
            m.reset()
        return out

    def samples_text(self, docs: list[dict], replies: list[str]) -> str:
        """Markdown of the first `log_samples` question / model reply / reference triples."""
        lines = []
        for d, reply in list(zip(docs, replies))[: self.config["log_samples"]]:
            question = self.decode([t for t in d["prompt"] if t != self.tokens[VIDEO_PAD]])
            lines.append(f"**Q** ({d['meta'].get('task')}): {question}  \n**model**: {reply}  \n"
                         f"**reference**: {self.decode(d['reference'])}")
        return "\n\n---\n\n".join(lines)
