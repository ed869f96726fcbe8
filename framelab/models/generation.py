"""Autoregressive generation: one decode loop over input embeddings and positions, for the text
`DecoderLM` and the `MultimodalLM` alike.

Layout. Rows are left-padded to a common width; a key-padding mask keeps padding invisible, and
each row carries its own positions ((B, S) for text, counting from the row's first real token;
(3, B, S) for multimodal, from `MultimodalLM.embed`), so a row decodes exactly as it would alone.
Every new token is placed one past the row's largest position so far, on all three axes (after a
text token that is last + 1; after a video block it is where `multimodal_positions` puts the next
text token). A row that has stopped feeds an invisible slot (masked, its position not advanced),
so its cache stays exactly what it would be had it decoded alone.

Cache. With `use_cache=True` the prompt is prefilled once and each step feeds one slot per row;
the cache is allocated for prompt + `max_new_tokens` and a continuation grows it in place
(`KVCache.update` reallocates when a write runs past its capacity). With `use_cache=False` every
step re-runs the whole sequence (the reference the cache is tested against).

Sampling: greedy (temperature 0), temperature, top-k, top-p (`sample_next`); `suppress_tokens` are
never sampled (their logits are -inf before sampling and before the log-probs: an RL rollout keeps
the video placeholder out of its replies). A row stops at any of
`stop_tokens` (kept in its output) or after `max_new_tokens`. The log-probability reported for a
sampled token is the RL convention (TRL, verl): log-softmax of the logits divided by the sampling
temperature (by 1 when greedy), before top-k / top-p filtering.

The sampled token of each row's last step is not fed yet: it is the row's `pending` input, and
`continue_generation` feeds it, then the appended tokens (and videos), then decodes on.

Step hook. `step_hook(step, tokens, hidden)` is called once per step after sampling: `step` counts
the steps of this call from 0, `tokens` (B,) holds the sampled ids (-1 on rows that sampled nothing
this step: stopped earlier, or not continued), `hidden` (B, D) the final-norm hidden states the
tokens were sampled from. It returns None, or `(embeds (B, D), replace (B,) bool)`: rows in
`replace` take `embeds` as their next input instead of the sampled token's embedding (Future-L1
feeds `hidden` back). The token is still reported, and positions advance by one all the same.
A hook may also return a third entry, `report` (B,): the ids to report, stop on and (where not
replaced) feed instead of the sampled ones; a row whose id it changes reports log-prob 0 there
(the hook chose that token, nothing sampled it). `framelab.models.latent.LatentSpans` uses it to
mark latent steps and forced span ends.

Cue recovery (a `MultimodalLM` with `config.cue_recovery`): the prompt's sinks gather its visual
tokens in the prefill, as in a full forward; decode steps and continuations feed no sink, so the
cache carries what the sinks gathered. The uncached path re-runs the prompt's sinks every step.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from framelab.kernels import AttentionSpec
from framelab.models.cache import KVCache
from framelab.models.cue_recovery import CueInputs
from framelab.models.multimodal import MultimodalLM

StepHook = Callable[[int, torch.Tensor, torch.Tensor],
                    "tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None"]


@dataclass
class DecodeState:
    """What a decode leaves behind to be continued; `continue_generation` advances it in place."""
    cache: KVCache | None         # None on the uncached path, which keeps `inputs` instead
    valid: torch.Tensor           # (B, S) which fed slots are real tokens
    next_positions: torch.Tensor  # (B,) text or (3, B) multimodal: the position of the next slot
    pending: torch.Tensor         # (B, D) each row's next input (its last sampled token), unfed
    inputs: torch.Tensor | None   # (B, S, D) every fed input, uncached path only
    positions: torch.Tensor | None  # (B, S) or (3, B, S) their positions, uncached path only
    # DeepStack additions of every fed input, uncached path only: per layer (B, S, D), zeros at
    # the non-visual slots (None while no input had any)
    deepstack: list[torch.Tensor] | None = None
    cue: CueInputs | None = None    # the prompt's sinks, uncached path only (re-run every step)


@dataclass
class Generation:
    """The new tokens of one call, per row; `finished`: ended at a stop token; `truncated`: ran
    out of `max_new_tokens` (a row not continued is neither and has no tokens)."""
    tokens: list[list[int]]
    logprobs: list[list[float]]
    finished: list[bool]
    truncated: list[bool]
    state: DecodeState


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row from logits (B, V)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = probs.cumsum(dim=-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ---- public entry points -------------------------------------------------------------------

@torch.no_grad()
def generate(model, prompts, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, stop_tokens=(),
             pad_id: int = 0, use_cache: bool = True,
             generator: torch.Generator | None = None) -> list[list[int]]:
    """New tokens per row from a `DecoderLM`; `prompts`: token-id lists (any lengths) or (B, S).
    `pad_id` is accepted for existing callers: padding is masked, so its id never matters."""
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    return decode(model, prompts, max_new_tokens, temperature=temperature, top_k=top_k,
                  top_p=top_p, stop_tokens=stop_tokens, use_cache=use_cache,
                  generator=generator).tokens


@torch.no_grad()
def generate_multimodal(model, prompts, videos, max_new_tokens: int, temperature: float = 0.0,
                        top_k: int | None = None, top_p: float | None = None, stop_tokens=(),
                        pad_id: int = 0, generator: torch.Generator | None = None) -> list[list[int]]:
    """New tokens per row from a `MultimodalLM`, cached. `prompts`: token-id lists holding a
    placeholder run per video; `videos[i]`: row i's videos (T, 3, H, W) in order. `pad_id` is
    accepted for existing callers: padding is masked, so its id never matters."""
    return decode(model, prompts, max_new_tokens, videos=videos, temperature=temperature,
                  top_k=top_k, top_p=top_p, stop_tokens=stop_tokens, generator=generator).tokens


@torch.no_grad()
def decode(model, prompts: list[list[int]], max_new_tokens: int, *, videos=None,
           temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           stop_tokens=(), use_cache: bool = True, generator: torch.Generator | None = None,
           step_hook: StepHook | None = None, suppress_tokens=()) -> Generation:
    """Generate from a `DecoderLM` (text prompts) or a `MultimodalLM` (prompts, `videos[i]` row i's
    videos); returns tokens, their log-probs, stop flags and the state to continue from."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    rows = _embed_rows(model, prompts, videos)
    embeds, positions, valid, deepstack = _left_pad(rows)
    return decode_embeddings(_language_model(model), embeds, positions, valid, max_new_tokens,
                             temperature=temperature, top_k=top_k, top_p=top_p,
                             stop_tokens=stop_tokens, use_cache=use_cache, generator=generator,
                             step_hook=step_hook, suppress_tokens=suppress_tokens,
                             deepstack=deepstack, cue=_stack_cue(rows, embeds.shape[1]))


@torch.no_grad()
def decode_embeddings(lm, embeds: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
                      max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
                      top_p: float | None = None, stop_tokens=(), use_cache: bool = True,
                      generator: torch.Generator | None = None,
                      step_hook: StepHook | None = None, suppress_tokens=(),
                      deepstack=None, cue: CueInputs | None = None) -> Generation:
    """Generate from a `DecoderLM` given left-padded input embeddings (B, S, D), their positions
    (B, S) or (3, B, S), and `valid` (B, S) marking the real slots (each row's last slot is);
    `deepstack`: the inputs' DeepStack additions (mask (B, S), [features]) of a Qwen3-VL model;
    `cue`: the inputs' sinks and visual tokens (cue recovery), run in the prefill."""
    if not bool(valid[:, -1].all()):
        raise ValueError("inputs must be left-padded: every row's last slot must be a real token")
    b, s, d = embeds.shape
    state = DecodeState(
        cache=lm.new_cache(s + max_new_tokens) if use_cache else None,
        valid=valid[:, :0], next_positions=torch.zeros_like(positions[..., 0]),
        pending=embeds.new_zeros(b, d), inputs=None if use_cache else embeds[:, :0],
        positions=None if use_cache else positions[..., :0])
    active = torch.ones(b, dtype=torch.bool, device=embeds.device)
    return _run(lm, state, embeds, positions, valid, active, max_new_tokens, temperature, top_k,
                top_p, stop_tokens, generator, step_hook, suppress_tokens, deepstack, cue)


@torch.no_grad()
def continue_generation(model, state: DecodeState, appended: list[list[int] | None],
                        max_new_tokens: int, *, videos=None, temperature: float = 0.0,
                        top_k: int | None = None, top_p: float | None = None, stop_tokens=(),
                        generator: torch.Generator | None = None,
                        step_hook: StepHook | None = None, suppress_tokens=()) -> Generation:
    """Decode on from `state` (a `Generation.state`, advanced in place): row i feeds its pending
    token, then `appended[i]` (with `videos[i]` at its placeholder runs, multimodal only), then
    samples up to `max_new_tokens` more; `appended[i] = None` leaves row i as it is."""
    if len(appended) != state.valid.shape[0]:
        raise ValueError(f"appended has {len(appended)} rows, the generation "
                         f"{state.valid.shape[0]}")
    if all(a is None for a in appended):
        raise ValueError("continue at least one row (appended[i] = None leaves row i as it is)")
    rows = []
    for i, (emb, pos, ds, _) in enumerate(_embed_rows(model, [a or [] for a in appended], videos)):
        if appended[i] is None:
            rows.append((emb[:0], pos[..., :0], None))
            continue
        at = state.next_positions[..., i, None]           # the pending token's position
        if ds is not None:                                # the pending token is not visual
            ds = (torch.cat([ds[0].new_zeros(1), ds[0]]), ds[1])
        rows.append((torch.cat([state.pending[i, None], emb]), torch.cat([at, pos + at + 1], -1),
                     ds))
    embeds, positions, valid, deepstack = _left_pad(rows)
    active = torch.tensor([a is not None for a in appended], device=embeds.device)
    return _run(_language_model(model), state, embeds, positions, valid, active, max_new_tokens,
                temperature, top_k, top_p, stop_tokens, generator, step_hook, suppress_tokens,
                deepstack)


# ---- the loop ------------------------------------------------------------------------------

def _run(lm, state: DecodeState, embeds, positions, valid, active, max_new_tokens: int,
         temperature, top_k, top_p, stop_tokens, generator, step_hook,
         suppress_tokens=(), deepstack=None, cue=None) -> Generation:
    """Feed a left-padded chunk, then sample, record and feed one slot per step."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    stops = torch.tensor(sorted(set(stop_tokens)) or [-1], device=embeds.device)
    suppress = torch.tensor(sorted(set(suppress_tokens)), dtype=torch.long, device=embeds.device)
    finished = torch.zeros_like(active)
    hidden = _feed(lm, state, embeds, positions, valid, deepstack, cue)
    tokens, logprobs = [], []
    for step in range(max_new_tokens):
        logits = lm.logits(hidden)
        if len(suppress):
            logits = logits.index_fill(-1, suppress, float("-inf"))
        tok = sample_next(logits, temperature, top_k, top_p, generator)
        scaled = logits.float() / (temperature if temperature > 0 else 1.0)
        logp = torch.log_softmax(scaled, -1).gather(-1, tok[:, None])[:, 0]
        tok = torch.where(active, tok, -1)
        swap = step_hook(step, tok, hidden) if step_hook is not None else None
        if swap is not None and len(swap) > 2 and swap[2] is not None:
            report = torch.where(active, swap[2].to(tok), -1)
            logp = torch.where(report == tok, logp, torch.zeros_like(logp))
            tok = report
        logprobs.append(logp)
        tokens.append(tok)
        nxt = lm.embed_tokens(tok.clamp(min=0))
        if swap is not None:
            new, replace = swap[0], swap[1]
            nxt = torch.where(replace.to(nxt.device)[:, None], new.to(nxt), nxt)
        state.pending = torch.where(active[:, None], nxt, state.pending)
        stop = active & torch.isin(tok, stops)
        finished, active = finished | stop, active & ~stop
        if step == max_new_tokens - 1 or not bool(active.any()):
            break
        hidden = _feed(lm, state, state.pending[:, None], state.next_positions[..., None],
                       active[:, None])
    tokens, logprobs = torch.stack(tokens, 1), torch.stack(logprobs, 1)
    counts = (tokens >= 0).sum(1).tolist()       # a row samples a prefix of the steps
    return Generation(tokens=[r[:n] for r, n in zip(tokens.tolist(), counts)],
                      logprobs=[r[:n] for r, n in zip(logprobs.tolist(), counts)],
                      finished=finished.tolist(), truncated=active.tolist(), state=state)


def _feed(lm, state: DecodeState, embeds, positions, valid, deepstack=None,
          cue=None) -> torch.Tensor:
    """Run new slots (B, q) through the model (with their DeepStack additions (mask (B, q),
    [features]) and their sinks (`cue`, the prefill) if any); return each row's last hidden
    state (B, D)."""
    state.valid = torch.cat([state.valid, valid], 1)
    if state.cache is None:       # uncached: re-run everything fed so far
        deepstack = _dense_deepstack(state, embeds, deepstack)
        state.inputs = embeds = torch.cat([state.inputs, embeds], 1)
        state.positions = positions = torch.cat([state.positions, positions], -1)
        if cue is not None and state.cue is None:
            state.cue = cue
        cue = state.cue.extended(embeds.shape[1] - state.cue.sink.shape[1]) if state.cue else None
    spec = AttentionSpec(causal=True, mask=_mask(state.valid, embeds.shape[1]))
    hidden = lm.hidden_states(inputs_embeds=embeds, positions=positions, spec=spec,
                              cache=state.cache, deepstack=deepstack, cue=cue)
    last = positions[..., -1]
    if last.dim() == 2:           # multimodal: after a video the next slot follows its largest axis
        last = last.amax(0).expand_as(last)
    state.next_positions = torch.where(valid[:, -1], last + 1, state.next_positions)
    return hidden[:, -1]


def _dense_deepstack(state: DecodeState, embeds, deepstack):
    """Uncached path: append this chunk's DeepStack additions to the state's dense ones (zeros at
    non-visual slots) and return them for the whole sequence as (all-True mask, [features])."""
    if deepstack is None and state.deepstack is None:
        return None
    b, q, d = embeds.shape
    chunk = None
    if deepstack is not None:
        mask, feats = deepstack
        chunk = [embeds.new_zeros(b, q, d).index_put((mask,), f.to(embeds.dtype)) for f in feats]
    if state.deepstack is None:
        state.deepstack = [embeds.new_zeros(b, state.inputs.shape[1], d) for _ in chunk]
    if chunk is None:
        chunk = [embeds.new_zeros(b, q, d) for _ in state.deepstack]
    state.deepstack = [torch.cat([old, new], 1) for old, new in zip(state.deepstack, chunk)]
    everywhere = torch.ones(b, state.deepstack[0].shape[1], dtype=torch.bool, device=embeds.device)
    return everywhere, [x.reshape(-1, d) for x in state.deepstack]


def _mask(valid: torch.Tensor, queries: int) -> torch.Tensor:
    """(B, 1, Sq, Sk) mask: causal is applied by the spec; here keys must be real tokens, and a
    padding query sees itself so that no row of the softmax is empty."""
    sk = valid.shape[1]
    keys = valid[:, None, None, :].expand(-1, 1, queries, sk)
    own = torch.arange(sk - queries, sk, device=valid.device)[:, None] == torch.arange(
        sk, device=valid.device)[None, :]
    return keys | own[None, None]


# ---- inputs --------------------------------------------------------------------------------

def _language_model(model):
    return model.lm if isinstance(model, MultimodalLM) else model


def _embed_rows(model, rows: list[list[int]], videos) -> list[tuple]:
    """Per row: input embeddings (n, D), positions counted from 0, (n,) or (3, n), and the
    DeepStack additions (mask (n,), [features]) of a Qwen3-VL row with vision, else None, and
    the row's sinks (`CueInputs` (1, n), a model with cue recovery) or None."""
    lm = _language_model(model)
    device = lm.output_weight.device
    if not isinstance(model, MultimodalLM):
        if videos is not None and any(videos):
            raise ValueError("a DecoderLM takes no videos; generate from a MultimodalLM")
        return [(lm.embed_tokens(torch.tensor(r, dtype=torch.long, device=device)),
                 torch.arange(len(r), device=device), None, None) for r in rows]
    videos = [[] for _ in rows] if videos is None else videos
    if len(videos) != len(rows):
        raise ValueError(f"videos has {len(videos)} rows, the prompts {len(rows)}")
    out = []
    for r, vids in zip(rows, videos):
        ids = torch.tensor([r], dtype=torch.long, device=device)
        inputs = model.prepare(ids, list(vids) or None)
        ds = inputs.deepstack
        out.append((inputs.embeds[0], inputs.positions[:, 0],
                    None if ds is None else (ds[0][0], ds[1]), inputs.cue))
    return out


def _stack_cue(rows: list[tuple], width: int) -> CueInputs | None:
    """The rows' sinks (`_embed_rows`' 4th entries) right-aligned like `_left_pad`'s embeds."""
    return CueInputs.stack([r[3] for r in rows], [r[0].shape[0] for r in rows], width)


def _left_pad(rows: list[tuple]):
    """Stack per-row (embeds (n, D), positions (..., n), deepstack or None) right-aligned:
    embeds (B, W, D), positions (..., B, W), valid (B, W) (padding is zeros), and the DeepStack
    additions (mask (B, W), [features in row-major order]) or None when no row has any."""
    emb0, pos0 = rows[0][:2]
    width = max(r[0].shape[0] for r in rows)
    embeds = emb0.new_zeros(len(rows), width, emb0.shape[-1])
    positions = pos0.new_zeros(*pos0.shape[:-1], len(rows), width)
    valid = torch.zeros(len(rows), width, dtype=torch.bool, device=emb0.device)
    ds_mask = torch.zeros(len(rows), width, dtype=torch.bool, device=emb0.device)
    ds_feats: list[list[torch.Tensor]] = []
    for i, (e, p, ds, *_) in enumerate(rows):
        n = e.shape[0]
        embeds[i, width - n:], positions[..., i, width - n:] = e, p
        valid[i, width - n:] = True
        if ds is not None:
            ds_mask[i, width - n:] = ds[0]
            ds_feats.append(ds[1])
    if not ds_feats:
        return embeds, positions, valid, None
    return embeds, positions, valid, (ds_mask, [torch.cat(f) for f in zip(*ds_feats)])
