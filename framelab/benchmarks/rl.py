"""`framelab bench rl [--json PATH] [--new-tokens N] [--batch B] [--device D] [--quick]`

The RL engine's benchmark. `SECTIONS` lists (run, show) pairs: `run(args, ctx) -> dict` measures
one section (`ctx`: the shared device, model shape and prompts), `show(dict)` prints its table, and
the dict is merged into the JSON payload, so a section can be added without touching the others.

1. Rollout speed (`rollout_speed`). One random Qwen3-shaped text model, the same B prompts (lengths
   drawn from `--prompt-lens MIN MAX`, fixed seed), every call producing exactly `--new-tokens`
   tokens per row (no stop tokens; transformers gets min_new_tokens = max_new_tokens and no EOS;
   the output lengths are checked). fp32 throughout.
   a. framelab `decode(..., use_cache=True)` vs `decode(..., use_cache=False)`, sampling at
      temperature 1.0 with a fixed-seed generator (an RL rollout). The uncached path re-runs the
      whole sequence every step. JSON `cache_speedup` = cached ÷ uncached tokens/s (target ≥ 5 at
      256 new tokens).
   b. framelab cached decode vs transformers `generate` (use_cache=True, DynamicCache), greedy, so
      both do the same work and must emit the same tokens. The model is a random
      `transformers.Qwen3ForCausalLM` built in-process from a `Qwen3Config` (no downloads),
      `save_pretrained` to a temporary directory, read back by transformers with
      `attn_implementation="sdpa"` (transformers' default, and the backend framelab's `auto`
      resolves to off-CUDA or under a padding mask, so both run the same attention kernel) and by
      framelab's `load_hf`. Before timing, the two models' logits on the prompts must agree to
      1e-4 (`logit_max_abs_diff`; asserted: a guard that the comparison is fair). Prompts of
      differing lengths are left-padded: framelab pads inside `decode`, transformers gets
      left-padded ids + attention_mask (positions then count from each row's first real token in
      both). `token_agreement` is the fraction of greedy tokens both emit identically (a tiny
      numeric difference can flip a near-tie; the bench fails only when agreement < 0.5).
      JSON `speedup_vs_transformers` = framelab cached greedy ÷ transformers greedy tokens/s; the
      same with sampling (transformers with top_k=0, top_p=1.0) is reported as
      `speedup_vs_transformers_sample`. framelab's tokens/s include the per-token log-probs that
      `decode` returns for RL (a log-softmax over the vocabulary per step); transformers' do not.

   Default shape: a Qwen3-shaped model of hidden 256, 4 layers, 8 heads, 2 kv heads, head_dim
   32, intermediate 512, vocab 8192, tied embeddings (4.3M parameters); batch 4, prompt lengths
   16..32, 256 new tokens. The uncached decode re-runs B·Σ(prompt + t) tokens (≈ 155K here, ~20 s
   a run on one core) and is most of the bench's time; these numbers keep the whole default bench
   near 2 minutes on one core of a shared 2-core CPU (`--threads 1`: with 2 threads on a CPU busy
   with other jobs, every small GEMM stalls at OpenMP barriers; see --help). Timing:
   `_common.timeit`, warmup 1, median of `--repeat` (3) runs, under `torch.inference_mode()`.
   `--quick` uses a tiny model, batch 2, prompts of 3..9 and 8 new tokens (for tests).

2. The split of one RL step (`rl_step_split`): on the same model shape, `framelab.rl.rollout`
   samples G = 8 completions of `--step-tokens` (64) tokens for each prompt (cached, temperature
   1), then one update runs as the rl stage does: teacher-forced scoring of the completions
   (`framelab.rl.logprobs`), the DAPO loss with random advantages, backward and an AdamW step.
   JSON `step_rollout_s`, `step_update_s`, `rollout_share` (rollout ÷ step) and the tokens/s of
   each (completion tokens ÷ seconds).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass

import torch

from framelab.benchmarks._common import machine, print_table, timeit, write_json
from framelab.kernels import AttentionSpec
from framelab.kernels.backends import pick_attention
from framelab.models import DecoderLM
from framelab.models.config import ModelConfig
from framelab.models.generation import decode
from framelab.models.hf import config_to_hf, load_hf

SHAPE = dict(vocab_size=8192, hidden=256, layers=4, heads=8, kv_heads=2, head_dim=32,
             intermediate=512, tie_embeddings=True)
QUICK_SHAPE = dict(vocab_size=512, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16,
                   intermediate=128, tie_embeddings=True)
LOGIT_TOL = 1e-4        # framelab vs transformers logits, fp32
MIN_AGREEMENT = 0.5     # greedy token agreement below this means the two models differ


@dataclass
class Context:
    """What every section shares: the device, a model shape and the prompts."""
    device: str
    config: ModelConfig
    prompts: list[list[int]]
    new_tokens: int
    repeat: int
    seed: int


# ---- section 1: rollout speed ----------------------------------------------------------------

def build_models(config: ModelConfig, device: str, seed: int, folder: str):
    """(transformers Qwen3ForCausalLM with sdpa, framelab DecoderLM): the same random weights,
    written once by transformers and read back by both."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()     # no "Loading weights" bars in the bench's output
    torch.manual_seed(seed)
    hf_cfg = Qwen3Config(**config_to_hf(config), initializer_range=config.hidden ** -0.5)
    hf = Qwen3ForCausalLM(hf_cfg)
    with torch.no_grad():   # norms start at 1: perturb every parameter so a wrong mapping shows
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(folder)
    hf = Qwen3ForCausalLM.from_pretrained(folder, attn_implementation="sdpa",
                                          dtype=torch.float32).to(device).eval()
    ours = load_hf(folder, dtype=torch.float32, device=device)
    if bars:
        hf_logging.enable_progress_bar()
    return hf, ours


def left_pad(prompts: list[list[int]], device: str, pad_id: int = 0):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def logit_parity(hf, ours: DecoderLM, prompts: list[list[int]], device: str) -> float:
    """Max |logit difference| over the prompts (each row alone, no padding)."""
    diff = 0.0
    for p in prompts:
        ids = torch.tensor([p], device=device)
        diff = max(diff, (hf(ids).logits.float() - ours(ids).logits.float()).abs().max().item())
    return diff


def hf_generate(hf, ids, mask, new_tokens: int, sample: bool, seed: int) -> torch.Tensor:
    """New tokens (B, new_tokens) from transformers `generate`, exactly `new_tokens` per row."""
    from transformers import GenerationConfig

    gen = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True,
                           do_sample=sample, temperature=1.0 if sample else None,
                           top_k=0 if sample else None, top_p=1.0 if sample else None,
                           eos_token_id=None, bos_token_id=None, pad_token_id=0)
    if sample:
        torch.manual_seed(seed)
    out = hf.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
    new = out[:, ids.shape[1]:]
    if new.shape[1] != new_tokens:
        raise RuntimeError(f"transformers generated {new.shape[1]} tokens, not {new_tokens}")
    return new


def fl_decode(model: DecoderLM, prompts, new_tokens: int, sample: bool, use_cache: bool,
              seed: int, device: str) -> torch.Tensor:
    """New tokens (B, new_tokens) from framelab `decode`, exactly `new_tokens` per row."""
    gen = torch.Generator(device=device).manual_seed(seed) if sample else None
    out = decode(model, prompts, new_tokens, temperature=1.0 if sample else 0.0,
                 use_cache=use_cache, generator=gen)
    if any(len(t) != new_tokens for t in out.tokens):
        raise RuntimeError(f"framelab decoded {[len(t) for t in out.tokens]} tokens per row, "
                           f"not {new_tokens}")
    return torch.tensor(out.tokens)


def framelab_attention(device: str) -> str:
    """The attention backend framelab's decode runs (its masks are padding masks)."""
    q = torch.zeros(1, 1, 1, 2, device=device)
    return pick_attention(q, AttentionSpec(mask=torch.ones(1, 1, 1, 1, dtype=torch.bool)))


def rollout_speed(args, ctx: Context) -> dict:
    b, n = len(ctx.prompts), ctx.new_tokens
    with tempfile.TemporaryDirectory(prefix="bench_rl_") as folder, torch.inference_mode():
        hf, ours = build_models(ctx.config, ctx.device, ctx.seed, folder)
        diff = logit_parity(hf, ours, ctx.prompts, ctx.device)
        if not diff <= LOGIT_TOL:
            raise RuntimeError(f"framelab and transformers logits differ by {diff:.3g} "
                               f"(> {LOGIT_TOL}): the speed comparison would not be fair")
        ids, mask = left_pad(ctx.prompts, ctx.device)
        runs = {   # name -> (implementation, cache, decoding, fn)
            "fl_cached_sample": ("framelab", "on", "sample", lambda: fl_decode(
                ours, ctx.prompts, n, True, True, ctx.seed, ctx.device)),
            "fl_uncached_sample": ("framelab", "off", "sample", lambda: fl_decode(
                ours, ctx.prompts, n, True, False, ctx.seed, ctx.device)),
            "fl_cached_greedy": ("framelab", "on", "greedy", lambda: fl_decode(
                ours, ctx.prompts, n, False, True, ctx.seed, ctx.device)),
            "hf_greedy": ("transformers", "on", "greedy", lambda: hf_generate(
                hf, ids, mask, n, False, ctx.seed)),
            "hf_sample": ("transformers", "on", "sample", lambda: hf_generate(
                hf, ids, mask, n, True, ctx.seed)),
        }
        seconds, tokens = {}, {}
        for name, (*_, fn) in runs.items():
            def run(name=name, fn=fn):
                tokens[name] = fn()
            seconds[name] = timeit(run, warmup=1, repeat=ctx.repeat)
    rate = {k: b * n / s for k, s in seconds.items()}
    agree = (tokens["fl_cached_greedy"] == tokens["hf_greedy"].cpu()).float()
    agreement = agree.mean().item()
    if agreement < MIN_AGREEMENT:
        raise RuntimeError(f"framelab and transformers greedy tokens agree on only "
                           f"{agreement:.1%}: the two models do not compute the same thing")
    cache_agree = (tokens["fl_cached_sample"] == tokens["fl_uncached_sample"]).float().mean()
    rows = [{"impl": impl, "cache": cache, "decoding": dec, "batch": b, "new_tokens": n,
             "seconds": round(seconds[k], 4), "tok_s": round(rate[k], 1),
             "vs_framelab_cached": round(rate[k] / rate[f"fl_cached_{dec}"], 3)}
            for k, (impl, cache, dec, _) in runs.items()]
    cfg = ctx.config
    return {
        "cache_speedup": rate["fl_cached_sample"] / rate["fl_uncached_sample"],
        "speedup_vs_transformers": rate["fl_cached_greedy"] / rate["hf_greedy"],
        "speedup_vs_transformers_sample": rate["fl_cached_sample"] / rate["hf_sample"],
        "framelab_cached_tok_s": rate["fl_cached_sample"],
        "framelab_uncached_tok_s": rate["fl_uncached_sample"],
        "framelab_cached_greedy_tok_s": rate["fl_cached_greedy"],
        "transformers_greedy_tok_s": rate["hf_greedy"],
        "transformers_sample_tok_s": rate["hf_sample"],
        "logit_max_abs_diff": diff,
        "token_agreement": agreement,
        "rows_identical": int(agree.all(1).sum()),
        "cache_token_agreement": cache_agree.item(),
        "framelab_attention": framelab_attention(ctx.device),
        "transformers_attention": "sdpa",
        "transformers_version": __import__("transformers").__version__,
        "shape": {k: getattr(cfg, k) for k in SHAPE},
        "params": ours.num_parameters(),
        "batch": b, "prompt_lens": [len(p) for p in ctx.prompts], "new_tokens": n,
        "rows": rows,
    }


def print_rollout(result: dict) -> None:
    print(f"rollout speed: batch {result['batch']}, prompt lengths {result['prompt_lens']}, "
          f"{result['new_tokens']} new tokens, shape {result['shape']}")
    print_table(result["rows"], ["impl", "cache", "decoding", "batch", "new_tokens", "seconds",
                                 "tok_s", "vs_framelab_cached"])
    print(f"cache_speedup {result['cache_speedup']:.2f}x  speedup_vs_transformers "
          f"{result['speedup_vs_transformers']:.2f}x (sampling "
          f"{result['speedup_vs_transformers_sample']:.2f}x)  logit_max_abs_diff "
          f"{result['logit_max_abs_diff']:.2e}  greedy token_agreement "
          f"{result['token_agreement']:.3f} ({result['rows_identical']}/{result['batch']} rows "
          f"identical)")


# ---- sections ----------------------------------------------------------------------------------
# Each: (function (args, ctx) -> dict merged into the JSON payload, printer of that dict).
# Section 2 (an RL step's time split between rollout and update) goes here.
# ---- section 2: the split of an RL step --------------------------------------------------------

def rl_step_split(args, ctx: Context) -> dict:
    from framelab.rl.logprobs import completion_hidden, pack, token_logprobs
    from framelab.rl.losses import policy_loss
    from framelab.rl.rollout import rollout

    torch.manual_seed(ctx.seed)
    model = DecoderLM(ctx.config).to(ctx.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    group, tokens = 8, args.step_tokens
    state = {}

    def roll():
        model.eval()
        state["ro"] = rollout(model, ctx.prompts, None, group, max_new_tokens=tokens,
                              generator=torch.Generator(device=ctx.device).manual_seed(ctx.seed))

    def update():
        model.train()
        ro = state["ro"]
        packed = pack(ro.prompts, ro.completions, ro.videos, ctx.device)
        logp, _ = token_logprobs(completion_hidden(model, packed), model.output_weight, packed)
        adv = torch.randn(len(ro), generator=torch.Generator().manual_seed(0)).to(ctx.device)
        loss, _ = policy_loss(logp, logp.detach(), adv, packed.mask, loss_type="dapo")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_roll = timeit(roll, warmup=1, repeat=ctx.repeat)
    t_update = timeit(update, warmup=1, repeat=ctx.repeat)
    n = sum(state["ro"].lengths)
    return {"step_group_size": group, "step_new_tokens": tokens, "step_rollout_s": round(t_roll, 4),
            "step_update_s": round(t_update, 4),
            "rollout_share": round(t_roll / (t_roll + t_update), 3),
            "step_rollout_tokens_per_s": round(n / t_roll, 1),
            "step_update_tokens_per_s": round(n / t_update, 1)}


def print_step(result: dict) -> None:
    print(f"\nRL step: {result['step_group_size']} samples per prompt, "
          f"{result['step_new_tokens']} new tokens")
    print_table([{"part": "rollout", "seconds": result["step_rollout_s"],
                  "tok_s": result["step_rollout_tokens_per_s"]},
                 {"part": "update", "seconds": result["step_update_s"],
                  "tok_s": result["step_update_tokens_per_s"]}], ["part", "seconds", "tok_s"])
    print(f"rollout share of the step {result['rollout_share']:.0%}")


SECTIONS = [(rollout_speed, print_rollout), (rl_step_split, print_step)]


def make_context(args) -> Context:
    shape = QUICK_SHAPE if args.quick else SHAPE
    config = ModelConfig(**shape)
    lo, hi = args.prompt_lens or ((3, 9) if args.quick else (16, 32))
    g = torch.Generator().manual_seed(args.seed)
    lens = torch.randint(lo, hi + 1, (args.batch,), generator=g).tolist()
    prompts = [torch.randint(0, config.vocab_size, (n,), generator=g).tolist() for n in lens]
    return Context(device=args.device, config=config, prompts=prompts,
                   new_tokens=args.new_tokens, repeat=args.repeat, seed=args.seed)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="framelab bench rl")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="tiny model and lengths (tests)")
    p.add_argument("--new-tokens", type=int, default=None, help="default 256 (8 with --quick)")
    p.add_argument("--batch", type=int, default=None, help="default 4 (2 with --quick)")
    p.add_argument("--prompt-lens", type=int, nargs=2, metavar=("MIN", "MAX"), default=None,
                   help="prompt lengths drawn in MIN..MAX (default 16 32; 3 9 with --quick)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-tokens", type=int, default=None,
                   help="new tokens per sample in the RL-step split (default 64; 4 with --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for the run (default: torch's own choice). On a CPU "
                        "shared with other jobs use 1: a multi-threaded GEMM whose threads get "
                        "descheduled waits at every barrier, and tiny decode matmuls then take "
                        "milliseconds")
    args = p.parse_args(argv)
    if args.new_tokens is None:
        args.new_tokens = 8 if args.quick else 256
    if args.batch is None:
        args.batch = 2 if args.quick else 4
    if args.step_tokens is None:
        args.step_tokens = 4 if args.quick else 64
    if args.new_tokens < 1 or args.batch < 1 or args.repeat < 1:
        p.error("--new-tokens, --batch and --repeat must be at least 1")
    if args.prompt_lens and not 1 <= args.prompt_lens[0] <= args.prompt_lens[1]:
        p.error("--prompt-lens MIN MAX needs 1 <= MIN <= MAX")
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ctx = make_context(args)
        payload = {"machine": machine(), "device": args.device, "dtype": "float32",
                   "threads": torch.get_num_threads(), "repeat": args.repeat, "seed": args.seed}
        start = time.perf_counter()
        for section, show in SECTIONS:
            result = section(args, ctx)
            show(result)
            payload.update(result)
        payload["bench_seconds"] = round(time.perf_counter() - start, 1)
    finally:
        torch.set_num_threads(threads)   # main may run inside another process (tests)
    write_json(args.json, payload)
    return 0
