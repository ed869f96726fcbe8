"""`framelab convert mla`: reparameterise a trained GQA checkpoint into M²LA; `framelab convert hf`:
write a Qwen3-VL run's checkpoint as a Hugging Face directory.

    framelab convert mla --ckpt IN --rank R --rope-dims r --out OUT [--method svd|activation]
                         [--calib-batches N] [--data-config CONFIG.yaml]
    framelab convert hf --ckpt RUN/checkpoints/last.ckpt --out DIR [--tokenizer hf:SRC]

IN is a video-LLM checkpoint or `hf:DIR`, a Qwen3-VL directory; rotary pairs are picked and
rotated by their own position axis under either M-RoPE layout (contiguous or Qwen3-VL's
interleaved), so full rank stays exact for both.

Per layer (see `MultiHeadLatentAttention` for the target layer):
1. Partial RoPE (MHA2MLA's 2-norm rule): in each kv group keep the r frequency pairs with the
   largest contribution ‖q_pair‖·‖k_pair‖ (summed over the group's query heads); the other pairs
   become "nope" dims. With calibration batches the norms are means over real activations (after
   the q/k RMSNorm); without, over the projection weights (rows of W_q, W_k scaled by the norms'
   gains) — our choice, since the weight rule needs no data.
2. Joint low-rank factorisation of the stacked key-nope and value state z = [k̂_nope; v̂]
   (G·(d_h − 2r) + G·d_h dims): find an orthonormal basis B (D × d_c); the latent is c = Bᵀz, and
   the per-head up-projections are the head's selection of rows of B. `svd` (MHA2MLA): B = top left
   singular vectors of the stacked weights [diag(g_k)·W_k_nope; W_v]. `activation` (TransMLA):
   B = top eigenvectors of the calibration covariance Σ z zᵀ with 1% damping.
At full rank (R ≥ D, e.g. R = 2·n_kv·d_h with every pair kept) B is the identity: the converted
model computes exactly what the GQA model did. R above D is clamped to D (printed).

Calibration batches come from the training data of the checkpoint's run (its `config.yaml`, found
beside `checkpoints/`, or `--data-config`). The output is a video-LLM checkpoint that
`framelab fit ... model.attention=mla init_from=OUT` starts from.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from framelab.errors import UserError, check_writable
from framelab.models.attention import GroupedQueryAttention, MultiHeadLatentAttention
from framelab.models.config import ModelConfig

METHODS = ("svd", "activation")


def pair_channels(pairs: torch.Tensor, head_dim: int) -> torch.Tensor:
    return torch.cat([pairs, pairs + head_dim // 2])


def pair_norms(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """‖pair i‖ for x (..., head_dim) in rotate-half layout -> (..., head_dim // 2)."""
    half = head_dim // 2
    return torch.sqrt(x[..., :half] ** 2 + x[..., half:] ** 2)


@torch.no_grad()
def choose_rope_pairs(attn: GroupedQueryAttention, r: int, acts: torch.Tensor | None) -> torch.Tensor:
    """(G, r) frequency pairs per kv group with the largest ‖q‖·‖k‖ (2-norm contribution)."""
    h, g, d = attn.heads, attn.kv_heads, attn.head_dim
    if r == d // 2:
        return torch.arange(r).expand(g, r).clone()
    if acts is not None:
        q, k, _ = gqa_states(attn, acts)
        qn = pair_norms(q, d).mean(0)                        # (H, d/2)
        kn = pair_norms(k, d).mean(0)                        # (G, d/2)
    else:
        def gain(norm):
            return norm.weight if norm is not None else torch.ones(d)
        wq = attn.q_proj.weight.view(h, d, -1) * gain(attn.q_norm)[None, :, None]
        wk = attn.k_proj.weight.view(g, d, -1) * gain(attn.k_norm)[None, :, None]
        qn = pair_norms(wq.norm(dim=-1), d)
        kn = pair_norms(wk.norm(dim=-1), d)
    score = qn.view(g, h // g, -1).sum(1) * kn               # (G, d/2)
    return score.topk(r, dim=-1).indices.sort(dim=-1).values


@torch.no_grad()
def gqa_states(attn: GroupedQueryAttention, x: torch.Tensor):
    """Per-token (q̂ (N, H, d), k̂ (N, G, d), v̂ (N, G·d)) of a GQA layer, after q/k norms, no rotary."""
    x = x.reshape(-1, x.shape[-1])
    q = attn.q_proj(x).view(-1, attn.heads, attn.head_dim)
    k = attn.k_proj(x).view(-1, attn.kv_heads, attn.head_dim)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q, k, attn.v_proj(x)


@torch.no_grad()
def latent_basis(attn: GroupedQueryAttention, pairs: torch.Tensor, rank: int, method: str,
                 acts: torch.Tensor | None) -> torch.Tensor:
    """Orthonormal B (D, rank) over z = [k̂_nope per group; v̂] (see module docstring)."""
    g, d = attn.kv_heads, attn.head_dim
    nope = torch.stack([keep_nope(pairs[i], d) for i in range(g)])            # (G, d_n)
    dim = g * nope.shape[1] + g * d
    if rank >= dim:
        return torch.eye(dim)
    if method == "activation":
        _, k, v = gqa_states(attn, acts)
        z = torch.cat([torch.gather(k, 2, nope.expand(k.shape[0], -1, -1)).flatten(1), v], dim=1)
        cov = (z.T.double() @ z.double()) / z.shape[0]
        cov += 0.01 * cov.diagonal().mean() * torch.eye(dim, dtype=cov.dtype)
        vals, vecs = torch.linalg.eigh(cov)
        return vecs[:, vals.argsort(descending=True)[:rank]].float()
    gain = attn.k_norm.weight if attn.k_norm is not None else torch.ones(d)
    wk = attn.k_proj.weight.view(g, d, -1) * gain[None, :, None]
    wk_nope = torch.gather(wk, 1, nope[..., None].expand(-1, -1, wk.shape[-1])).flatten(0, 1)
    stacked = torch.cat([wk_nope, attn.v_proj.weight], dim=0).double()
    u, _, _ = torch.linalg.svd(stacked, full_matrices=True)
    return u[:, :rank].float()


def keep_nope(pairs: torch.Tensor, head_dim: int) -> torch.Tensor:
    keep = torch.ones(head_dim, dtype=torch.bool)
    keep[pair_channels(pairs, head_dim)] = False
    return torch.arange(head_dim)[keep]


@torch.no_grad()
def convert_layer(attn: GroupedQueryAttention, rank: int, r: int, method: str,
                  acts: torch.Tensor | None) -> MultiHeadLatentAttention:
    h, g, d = attn.heads, attn.kv_heads, attn.head_dim
    pairs = choose_rope_pairs(attn, r, acts)
    basis = latent_basis(attn, pairs, rank, method, acts)                     # (D, d_c)
    d_c, d_n = basis.shape[1], d - 2 * r
    hidden = attn.q_proj.weight.shape[1]
    mla = MultiHeadLatentAttention(hidden, h, g, d, d_c, 2 * r, pairs,
                                   qk_norm=attn.q_norm is not None,
                                   eps=attn.q_norm.eps if attn.q_norm is not None else 1e-6)
    sd = {k: v for k, v in attn.state_dict().items()}
    sd["kv_down.weight"] = basis.T.contiguous()
    group = torch.arange(h) // (h // g)
    k_rows = torch.stack([torch.arange(d_n) + int(group[i]) * d_n for i in range(h)])   # (H, d_n)
    v_rows = torch.stack([g * d_n + torch.arange(d) + int(group[i]) * d for i in range(h)])
    sd["k_up.weight"] = basis[k_rows.flatten()].contiguous()
    sd["v_up.weight"] = basis[v_rows.flatten()].contiguous()
    sd["rope_pairs"] = pairs
    mla.load_state_dict(sd)
    return mla


@torch.no_grad()
def convert_model(lm, rank: int, r: int, method: str = "svd",
                  acts: list[torch.Tensor] | None = None) -> ModelConfig:
    """Replace every GQA layer of the DecoderLM `lm` in place; returns the new config."""
    cfg = lm.config
    if cfg.attention != "gqa":
        raise UserError(f"convert mla: the checkpoint is already attention={cfg.attention}")
    if not 1 <= r <= cfg.head_dim // 2:
        raise UserError(f"--rope-dims {r}: keep between 1 and head_dim/2 = {cfg.head_dim // 2} "
                        "frequency pairs per kv group")
    if method == "activation" and not acts:
        raise UserError("--method activation needs calibration batches (--calib-batches N > 0)")
    d_c = None
    for i, block in enumerate(lm.layers):
        block.self_attn = convert_layer(block.self_attn, rank, r, method,
                                        acts[i] if acts else None)
        d_c = block.self_attn.kv_lora_rank
    cfg.attention, cfg.kv_lora_rank, cfg.qk_rope_dim = "mla", d_c, 2 * r
    return cfg


@torch.no_grad()
def collect_inputs(model, batches, max_tokens: int = 8192) -> list[torch.Tensor]:
    """Each decoder layer's attention input (N, hidden) over the calibration batches."""
    lm = model.lm
    store: list[list[torch.Tensor]] = [[] for _ in lm.layers]
    hooks = [b.self_attn.register_forward_hook(
        lambda mod, args, out, i=i: store[i].append(args[0].reshape(-1, args[0].shape[-1])))
        for i, b in enumerate(lm.layers)]
    try:
        for batch in batches:
            model.hidden_states(batch["input_ids"], batch.get("videos"), batch.get("cu_seqlens"))
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(s)[:max_tokens] for s in store]


def calibration_batches(data_config: Path, n: int) -> list[dict]:
    from framelab.run_folder import load_datamodule

    if not data_config.is_file():
        raise UserError(f"calibration data: no run config at {data_config}; pass --data-config "
                        "RUN/config.yaml or --calib-batches 0")
    dm = load_datamodule(data_config, "--data-config")
    dm.prepare_data()
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    return [dm.on_after_batch_transfer(next(it), 0) for _ in range(n)]


def video_llm(src: dict, ckpt_path: str):
    """(MultimodalLM with the weights, its config, its spec's token ids) of `read_weights`' output:
    a video-LLM checkpoint, or a Qwen3-VL directory (hf:DIR)."""
    from framelab.lightning_modules.qwen3_vl import is_qwen3_vl, qwen3_vl_model
    from framelab.models.multimodal import MultimodalLM

    if src["spec"]["module"] not in (None, "VideoLLMModule") or "vision" not in src["spec"]["config"]:
        raise UserError(f"--ckpt {ckpt_path}: a {src['spec']['module']} checkpoint; give a video-LLM "
                        "checkpoint (experiment=videollm_*) or a Qwen3-VL directory (hf:DIR)")
    cfg = ModelConfig.from_dict(dict(src["spec"]["config"]))
    tokens = src["spec"]["tokens"]
    if is_qwen3_vl(src["spec"]["config"]):
        model = qwen3_vl_model(cfg, tokens)
    else:
        model = MultimodalLM(cfg, tokens.get("<|video_pad|>", 0))
    model.load_state_dict(src["state_dict"])
    return model.eval(), cfg, tokens


# files of a Hugging Face checkpoint directory that `convert hf --tokenizer DIR` copies beside the
# weights (those that exist): the tokenizer, chat template and processors
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.json",
                   "chat_template.jinja", "preprocessor_config.json",
                   "video_preprocessor_config.json", "generation_config.json")


def export_checkpoint(ckpt_path: str, out: str, tokenizer: str | None = None) -> list[str]:
    """Write a Qwen3-VL video-LLM checkpoint as a Hugging Face directory (`export_hf`), with the
    tokenizer and processor files of `tokenizer` (a directory, or hf:DIR) copied beside it.
    Returns the names of the files copied."""
    import shutil

    from framelab.checkpoints import HF_PREFIX, read_weights
    from framelab.models.hf import export_hf

    model, cfg, _ = video_llm(read_weights(ckpt_path, "--ckpt"), ckpt_path)
    if not model.qwen3_vl:
        raise UserError(f"--ckpt {ckpt_path}: its model has vision flavour "
                        f"{cfg.vision.flavour!r}; convert hf writes Qwen3-VL models (runs started "
                        "with init_from=hf:DIR)")
    if cfg.attention != "gqa":
        raise UserError(f"--ckpt {ckpt_path}: attention={cfg.attention}; transformers' Qwen3-VL "
                        "has grouped-query attention only, so an M²LA model cannot be exported")
    source = None
    if tokenizer:
        source = Path(tokenizer[len(HF_PREFIX):] if tokenizer.startswith(HF_PREFIX) else tokenizer)
        if not (source / "tokenizer.json").is_file():
            raise UserError(f"--tokenizer {tokenizer}: no tokenizer.json in {source}; give the "
                            "checkpoint directory the run started from")
    export_hf(model, out)
    copied = [n for n in TOKENIZER_FILES if source is not None and (source / n).is_file()]
    for name in copied:
        shutil.copyfile(source / name, Path(out) / name)
    return copied


def convert_checkpoint(ckpt_path: str, out: str, rank: int, r: int, method: str = "svd",
                       calib_batches: int = 0, data_config: str | None = None) -> dict:
    from framelab.checkpoints import MODEL_KEY, read_weights

    src = read_weights(ckpt_path, "--ckpt")
    model, cfg, tokens = video_llm(src, ckpt_path)
    acts = None
    if calib_batches:
        path = Path(data_config) if data_config else Path(ckpt_path).resolve().parent.parent / "config.yaml"
        acts = collect_inputs(model, calibration_batches(path, calib_batches))
    new_cfg = convert_model(model.lm, rank, r, method, acts)
    model.config = new_cfg
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    tmp = Path(out).with_name(f".{Path(out).name}.tmp-{os.getpid()}")
    torch.save({"state_dict": state, "converted_from": str(ckpt_path),
                MODEL_KEY: {"module": "VideoLLMModule", "config": new_cfg.to_dict(),
                            "tokens": tokens}}, tmp)
    os.replace(tmp, out)
    return new_cfg.to_dict()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="framelab convert",
        description="checkpoint conversions (mla: GQA -> M²LA; hf: a Qwen3-VL run's checkpoint -> "
                    "a Hugging Face directory)")
    parser.add_argument("kind", choices=["mla", "hf"])
    parser.add_argument("--ckpt", required=True,
                        help="a video-LLM checkpoint (GQA), or hf:DIR (a Qwen3-VL directory; mla)")
    parser.add_argument("--rank", type=int, help="mla: latent width d_c per layer")
    parser.add_argument("--rope-dims", type=int,
                        help="mla: rotary frequency pairs kept per kv group (head_dim/2 keeps all)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--method", choices=METHODS, default="svd")
    parser.add_argument("--calib-batches", type=int, default=0,
                        help="mla: training batches for activation statistics (2-norm rule, PCA)")
    parser.add_argument("--data-config", default=None,
                        help="mla: run config.yaml whose data section gives the calibration batches")
    parser.add_argument("--tokenizer", default=None,
                        help="hf: the directory (or hf:DIR) whose tokenizer and processor files "
                             "are copied beside the weights")
    args = parser.parse_args(argv)
    try:
        check_writable(Path(args.out).absolute().parent, f"--out {args.out}")
        if args.kind == "hf":
            copied = export_checkpoint(args.ckpt, args.out, args.tokenizer)
            print(f"wrote {args.out}: config.json + model.safetensors (Qwen3-VL)"
                  + (f" + {len(copied)} tokenizer/processor files" if copied else
                     "; no tokenizer files (pass --tokenizer DIR)"))
            return 0
        if args.rank is None or args.rope_dims is None:
            raise UserError("convert mla needs --rank R and --rope-dims r")
        if args.rank < 1:
            raise UserError(f"--rank {args.rank}: must be >= 1")
        cfg = convert_checkpoint(args.ckpt, args.out, args.rank, args.rope_dims, args.method,
                                 args.calib_batches, args.data_config)
    except UserError as exc:
        print(f"framelab: error: {exc}", file=sys.stderr)
        return 2
    full = cfg["kv_heads"] * (2 * cfg["head_dim"] - cfg["qk_rope_dim"])
    note = f" (clamped from {args.rank}: the full state has {full} dims)" if args.rank > full else ""
    print(f"wrote {args.out}: attention=mla kv_lora_rank={cfg['kv_lora_rank']}{note} "
          f"qk_rope_dim={cfg['qk_rope_dim']} ({args.method}); cache per token per layer "
          f"{cfg['kv_lora_rank'] + cfg['kv_heads'] * cfg['qk_rope_dim']} values vs "
          f"{2 * cfg['kv_heads'] * cfg['head_dim']} for GQA")
    return 0
