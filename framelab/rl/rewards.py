"""Rule-based rewards for RL on the world's questions, and the weighted set a run trains on.

A reward is any callable `fn(completion, meta, *, length, **params) -> float`: `completion` is the
decoded reply (special tokens dropped), `meta` the question's ground truth (a turn's meta merged
over its sample's, as `VideoQAEvaluator.documents` gives it: `format`, `answer`, `answer_text`,
`choices`, `reply`, `spans`), `length` the completion's token count; `params` come from the config.
Parsing is the evaluation's (`extract_choice`, `extract_named`, `exact_match`, `parse_span`), so a
reward of 1 means the metric counts the reply right. The answer is read from `answer_part(c)`: the
text inside the last `<answer>...</answer>` when the reply has that tag, else the whole reply.

Built-in rewards (y = answer_part(completion)):
- `format` (param `style`): 1 if the reply has the expected shape, else 0.
  style="world" (default): the world's shape for this question -- mcq "rationale": exactly
  `Answer: <one of meta.choices> <letter>` (one space each, an optional final period); mcq
  "letter": a bare letter A-D, optionally followed by a period; open: one non-empty line in which
  `extract_choice` finds no option letter; span: `parse_span` finds two numbers; any other format:
  0. style="think": the whole reply is `<think>...</think><answer>...</answer>` (whitespace around
  and between the blocks allowed, each tag exactly once, a non-empty answer), as in DeepSeek-R1.
- `accuracy`: per format -- mcq: [extract_choice(y) == answer]; open: [exact_match(y, answer)];
  span: temporal IoU (continuous in [0, 1]) of parse_span(y) with meta.spans; else 0.
- `choice`: mcq only: [extract_choice(y) == answer]; 0 for other formats.
- `named`: "rationale" mcq only: [exact_match(extract_named(y), answer_text)], the named option's
  text is the right one whatever letter follows; 0 otherwise.
- `exact`: [exact_match(y, answer)] (for mcq the answer is the letter, so only a bare letter hits).
- `tiou`: span only: temporal_iou(parse_span(y), spans); 0 for other formats.
- `overlong` (params `max_len` = L_max, `buffer` = L_buf, 0 < L_buf <= L_max): DAPO's soft
  overlong punishment of a completion of n tokens (arXiv:2503.14476 §3.4, where L_buf is L_cache):
      0                              if n <= L_max - L_buf
      ((L_max - L_buf) - n) / L_buf  if L_max - L_buf < n <= L_max   (0 down to -1, linear)
      -1                             if n > L_max
  verl's DAPO reward manager computes min(-(n - (L_max - L_buf)) / L_buf * penalty_factor, 0),
  the same inside the buffer with penalty_factor 1 (its responses never exceed L_max); here the
  term's weight plays penalty_factor's role, and the term is added to the others (DAPO adds it to
  the answer reward).

Your own reward: decorate it with `@register_reward("name")` in a module the run imports, or name
it in the config by dotted path, `"my_pkg.my_module:my_reward"`. The keyword parameters it declares
besides `length` are its config params (required unless they have a default).

`build_rewards(cfg)` makes the `RewardSet` of a config: a mapping `key -> weight` or
`key -> {weight: w, fn: <name or path>, **params}` (`fn` defaults to the key, `weight` to 1; `fn`
lets one function appear under two keys with different params), or a list of names (weight 1
each). `RewardSet(completions, metas, lengths)` -> (weighted total (N,), {key: unweighted (N,)}),
float32. A term that raises on a sample (or returns no finite number) scores 0 there and adds 1 to
`RewardSet.errors[key]`, a running count; the first such error of each term is logged as a
warning. Nothing is re-raised: one odd reply must not end a run.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from numbers import Real

import torch

from framelab.errors import UserError
from framelab.evaluation.choice import extract_choice, extract_named
from framelab.evaluation.exact import exact_match
from framelab.evaluation.temporal import parse_span, temporal_iou

log = logging.getLogger(__name__)

REWARDS: dict[str, Callable] = {}
CHECKS: dict[str, Callable] = {}      # name -> check(params), raising ValueError on bad params
STYLES = ("world", "think")
LETTERS = "ABCD"
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)
_THINK = re.compile(r"\s*<think>.*?</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def register_reward(name: str, check: Callable | None = None) -> Callable:
    """Decorator: register `fn` as reward `name` (a second `name` is a ValueError). `check(params)`,
    optional, raises ValueError on bad params; `build_rewards` reports it as a UserError."""
    def deco(fn: Callable) -> Callable:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered ({REWARDS[name]!r})")
        REWARDS[name] = fn
        if check is not None:
            CHECKS[name] = check
        return fn
    return deco


def get_reward(name: str) -> Callable:
    """The reward registered as `name`, or the callable at dotted path "pkg.module:function"."""
    if name in REWARDS:
        return REWARDS[name]
    if ":" not in name:
        raise UserError(f"unknown reward {name!r}; registered: {', '.join(sorted(REWARDS))}, or "
                        "give a dotted path 'pkg.module:function'")
    module, _, attr = name.partition(":")
    try:
        fn = importlib.import_module(module)
        for part in attr.split("."):
            fn = getattr(fn, part)
    except Exception as exc:  # noqa: BLE001 -- any failure to import is the path's
        why = " ".join(str(exc).split())
        raise UserError(f"reward {name!r} does not resolve ({type(exc).__name__}: {why}); give "
                        "'pkg.module:function' of an importable module") from None
    if not callable(fn):
        raise UserError(f"reward {name!r} is a {type(fn).__name__}, not a callable; give "
                        "'pkg.module:function'")
    return fn


def answer_part(completion: str) -> str:
    """The text inside the last `<answer>...</answer>` (to the end when unclosed), else the whole
    reply."""
    found = _ANSWER.findall(completion or "")
    return found[-1].strip() if found else (completion or "")


# ---- built-in rewards ------------------------------------------------------------------------
def world_format(reply: str, meta: dict) -> bool:
    """Whether `reply` has the world's reply shape for this question (module docstring)."""
    s, fmt = (reply or "").strip(), meta.get("format")
    if fmt == "mcq":
        choices = [str(c) for c in meta.get("choices") or []]
        letters = LETTERS[:len(choices)] or LETTERS
        if meta.get("reply", "letter") == "rationale":
            m = re.fullmatch(rf"Answer: (.+) ([{letters}])\.?", s)
            return bool(m) and m.group(1) in choices
        return re.fullmatch(rf"[{letters}]\.?", s) is not None
    if fmt == "open":
        return bool(s) and "\n" not in s and extract_choice(s) is None
    if fmt == "span":
        return parse_span(s) is not None
    return False


def think_format(reply: str) -> bool:
    """Whether the whole reply is `<think>...</think><answer>...</answer>` (module docstring)."""
    m = _THINK.fullmatch(reply or "")
    return bool(m) and bool(m.group(1).strip()) and all(reply.count(t) == 1 for t in _TAGS)


def _check_style(params: dict) -> None:
    if params.get("style", "world") not in STYLES:
        raise ValueError(f"style={params['style']!r}; choose one of {', '.join(STYLES)}")


@register_reward("format", check=_check_style)
def format_reward(completion: str, meta: dict, *, length: int = 0, style: str = "world") -> float:
    if style == "think":
        return float(think_format(completion))
    return float(world_format(completion, meta))


@register_reward("choice")
def choice_reward(completion: str, meta: dict, *, length: int = 0) -> float:
    if meta.get("format") != "mcq":
        return 0.0
    return float(extract_choice(answer_part(completion)) == meta["answer"])


@register_reward("named")
def named_reward(completion: str, meta: dict, *, length: int = 0) -> float:
    if meta.get("format") != "mcq" or meta.get("reply") != "rationale":
        return 0.0
    return float(exact_match(extract_named(answer_part(completion)), meta["answer_text"]))


@register_reward("exact")
def exact_reward(completion: str, meta: dict, *, length: int = 0) -> float:
    return float(exact_match(answer_part(completion), meta["answer"]))


@register_reward("tiou")
def tiou_reward(completion: str, meta: dict, *, length: int = 0) -> float:
    if meta.get("format") != "span":
        return 0.0
    return float(temporal_iou(parse_span(answer_part(completion)), meta["spans"]))


@register_reward("accuracy")
def accuracy_reward(completion: str, meta: dict, *, length: int = 0) -> float:
    fmt = meta.get("format")
    if fmt == "mcq":
        return choice_reward(completion, meta)
    if fmt == "open":
        return exact_reward(completion, meta)
    return tiou_reward(completion, meta)          # 0 unless a span question


def _check_overlong(params: dict) -> None:
    max_len, buffer = params["max_len"], params["buffer"]
    if not (isinstance(max_len, Real) and isinstance(buffer, Real) and 0 < buffer <= max_len):
        raise ValueError(f"max_len={max_len!r}, buffer={buffer!r}; need numbers with "
                         "0 < buffer <= max_len")


@register_reward("overlong", check=_check_overlong)
def overlong_reward(completion: str, meta: dict, *, length: int, max_len: int,
                    buffer: int) -> float:
    if length <= max_len - buffer:
        return 0.0
    if length <= max_len:
        return (max_len - buffer - length) / buffer
    return -1.0


# ---- the weighted set ------------------------------------------------------------------------
class RewardSet:
    """Weighted reward terms; see the module docstring. `terms`: (key, fn, weight, params)."""

    def __init__(self, terms: list[tuple[str, Callable, float, dict]]):
        self.terms = [(k, fn, float(w), dict(p)) for k, fn, w, p in terms]
        self.errors: dict[str, int] = {k: 0 for k, *_ in self.terms}

    @property
    def names(self) -> list[str]:
        return [k for k, *_ in self.terms]

    def __call__(self, completions: list[str], metas: list[dict],
                 lengths: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not len(completions) == len(metas) == len(lengths):
            raise ValueError(f"{len(completions)} completions, {len(metas)} metas and "
                             f"{len(lengths)} lengths; expected one of each per sample")
        parts, total = {}, torch.zeros(len(completions), dtype=torch.float32)
        for key, fn, weight, params in self.terms:
            values = [self.score(key, fn, params, c, m, int(n))
                      for c, m, n in zip(completions, metas, lengths)]
            parts[key] = torch.tensor(values, dtype=torch.float32)
            total += weight * parts[key]
        return total, parts

    def score(self, key: str, fn: Callable, params: dict, completion: str, meta: dict,
              length: int) -> float:
        """fn's value on one sample; 0.0 (counted in `errors[key]`) when it fails."""
        try:
            value = float(fn(completion, meta, length=length, **params))
            if not math.isfinite(value):
                raise ValueError(f"returned {value}")
            return value
        except Exception as exc:  # noqa: BLE001 -- see the module docstring
            if not self.errors[key]:
                log.warning("reward %r failed (%s: %s); counted as 0, see RewardSet.errors",
                            key, type(exc).__name__, exc)
            self.errors[key] += 1
            return 0.0


def _params(fn: Callable) -> tuple[set[str] | None, set[str], bool]:
    """(allowed param names or None for any, required names, accepts `length`) of a reward."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):                   # not introspectable: trust it
        return None, set(), True
    ps = list(sig.parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in ps):
        return None, set(), True
    named = [p for p in ps[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    allowed = {p.name for p in named} - {"length"}
    required = {p.name for p in named if p.default is p.empty} - {"length"}
    return allowed, required, "length" in {p.name for p in named}


def build_rewards(cfg, where: str = "rewards") -> RewardSet:
    """The RewardSet of a config (module docstring); a bad entry is a one-line UserError naming
    `<where>.<key>`."""
    if isinstance(cfg, Sequence) and not isinstance(cfg, str):
        names = [str(n) for n in cfg]
        if len(set(names)) != len(names):
            raise UserError(f"{where} lists a reward twice ({names}); give each once, or use a "
                            "mapping with `fn` to repeat one with other params")
        cfg = {n: 1.0 for n in names}
    if not isinstance(cfg, Mapping):
        raise UserError(f"{where}={cfg!r}; give a mapping name -> weight or -> {{weight, ...}}, "
                        "or a list of names")
    if not cfg:
        raise UserError(f"{where} is empty; name at least one reward: {', '.join(sorted(REWARDS))}")
    terms = []
    for key, entry in cfg.items():
        at = f"{where}.{key}"
        entry = dict(entry) if isinstance(entry, Mapping) else {"weight": entry}
        weight = entry.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, Real) or not math.isfinite(weight):
            raise UserError(f"{at}.weight={weight!r}; give a finite number (e.g. 1.0)")
        name = str(entry.pop("fn", key))
        try:
            fn = get_reward(name)
        except UserError as exc:
            raise UserError(f"{at}: {exc}") from None
        allowed, required, takes_length = _params(fn)
        if not takes_length:
            raise UserError(f"{at}: reward {name!r} takes no keyword `length`; define it as "
                            "fn(completion, meta, *, length, **params)")
        if allowed is not None and set(entry) - allowed:
            raise UserError(f"{at} has unknown keys {sorted(set(entry) - allowed)}; valid: "
                            f"{', '.join(['weight', 'fn', *sorted(allowed)])}")
        if required - set(entry):
            raise UserError(f"{at} needs {', '.join(sorted(required - set(entry)))} (params of "
                            f"reward {name!r})")
        try:
            if name in CHECKS:
                CHECKS[name](entry)
        except ValueError as exc:
            raise UserError(f"{at}: {exc}") from None
        terms.append((str(key), fn, float(weight), entry))
    return RewardSet(terms)
