"""GQA -> M²LA reparameterisation: exact at full rank (logits to 1e-4, fp32), 2-norm RoPE pair
choice, and the activation-aware basis beats weight SVD on its own calibration activations."""
import torch

from framelab.convert import (collect_inputs, convert_layer, convert_model, gqa_states,
                              latent_basis, main)
from framelab.checkpoints import read_weights
from framelab.models import MultimodalLM, preset
from framelab.models.attention import GroupedQueryAttention


def tiny_video_lm(seed=0):
    torch.manual_seed(seed)
    cfg = preset("tiny", vision={"width": 32, "depth": 1, "heads": 2, "patch_size": 8})
    model = MultimodalLM(cfg, video_token_id=500).eval()
    for p in model.parameters():               # norms away from 1, so their gains matter
        if p.ndim == 1:
            p.data = 1 + 0.3 * torch.randn_like(p)
    return model


def sample(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 400, (1, 20), generator=g)
    ids[0, 3:11] = 500                          # one 4-frame 32x32 video = 8 vision tokens
    return ids, [torch.rand(4, 3, 32, 32, generator=g)]


def test_full_rank_conversion_is_exact_through_the_cli(tmp_path):
    model = tiny_video_lm()
    ids, videos = sample()
    ref = model(ids, videos).logits
    ckpt = tmp_path / "gqa.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "videollm_model": model.config.to_dict(),
                "videollm_tokens": {"<|video_pad|>": 500}}, ckpt)
    cfg = model.config
    rank = 2 * cfg.kv_heads * cfg.head_dim
    out = tmp_path / "mla.ckpt"
    assert main(["mla", "--ckpt", str(ckpt), "--rank", str(rank),
                 "--rope-dims", str(cfg.head_dim // 2), "--out", str(out)]) == 0
    src = read_weights(str(out), "converted")
    assert src["spec"]["config"]["attention"] == "mla"
    from framelab.models.config import ModelConfig
    mla = MultimodalLM(ModelConfig.from_dict(src["spec"]["config"]), 500).eval()
    mla.load_state_dict(src["state_dict"])
    torch.testing.assert_close(mla(ids, videos).logits, ref, atol=1e-4, rtol=1e-4)
    # and its absorbed cached decode reproduces the full forward
    cache = mla.lm.new_cache()
    first = mla(ids[:, :15], videos, cache=cache).logits
    torch.testing.assert_close(first, ref[:, :15], atol=1e-4, rtol=1e-4)


def test_two_norm_rule_keeps_the_dominant_pairs():
    torch.manual_seed(0)
    attn = GroupedQueryAttention(64, 4, 2, 16, qk_norm=False)
    with torch.no_grad():
        attn.q_proj.weight.view(4, 16, 64)[0:2, [3, 11]] *= 50   # heads of group 0, pair 3
        attn.k_proj.weight.view(2, 16, 64)[1, [6, 14]] *= 50     # group 1, pair 6
    mla = convert_layer(attn, rank=16, r=1, method="svd", acts=None)
    assert mla.rope_pairs.tolist() == [[3], [6]]
    acts = torch.randn(256, 64)
    mla = convert_layer(attn, rank=16, r=1, method="svd", acts=acts)
    assert mla.rope_pairs.tolist() == [[3], [6]]


def test_activation_basis_reconstructs_calibration_state_better_than_weight_svd():
    model = tiny_video_lm(1)
    ids, videos = sample(1)
    acts = collect_inputs(model, [{"input_ids": ids, "videos": videos}])
    attn = model.lm.layers[0].self_attn
    pairs = torch.tensor([[0, 5], [1, 6]])
    _, k, v = gqa_states(attn, acts[0])
    from framelab.convert import keep_nope
    nope = torch.stack([keep_nope(pairs[i], 16) for i in range(2)])
    z = torch.cat([torch.gather(k, 2, nope.expand(k.shape[0], -1, -1)).flatten(1), v], 1)

    def error(basis):
        return float((z - z @ basis @ basis.T).norm())
    act = latent_basis(attn, pairs, 12, "activation", acts[0])
    svd = latent_basis(attn, pairs, 12, "svd", None)
    assert error(act) < error(svd)
    assert error(latent_basis(attn, pairs, 10**6, "svd", None)) < 1e-4   # full rank: lossless


def test_converted_model_runs_below_full_rank():
    model = tiny_video_lm(2)
    ids, videos = sample(2)
    cfg = convert_model(model.lm, rank=20, r=2, method="svd")
    assert (cfg.attention, cfg.kv_lora_rank, cfg.qk_rope_dim) == ("mla", 20, 4)
    logits = model(ids, videos).logits
    assert torch.isfinite(logits).all()
