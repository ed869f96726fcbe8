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


# ---- interleaved M-RoPE (Qwen3-VL) --------------------------------------------------------------

def tiny_qwen3_vl(seed=0):
    """A random Qwen3-VL-flavoured MultimodalLM: interleaved M-RoPE (2, 3, 3), DeepStack."""
    from framelab.models.config import ModelConfig, VisionConfig
    torch.manual_seed(seed)
    vision = VisionConfig(width=32, depth=2, heads=2, intermediate=48, patch_size=4,
                          flavour="qwen3_vl", num_position_embeddings=16, deepstack=(0,))
    cfg = ModelConfig(vocab_size=300, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16,
                      intermediate=96, rope_theta=10000.0, mrope_section=(2, 3, 3),
                      mrope_interleaved=True, vision=vision)
    model = MultimodalLM(cfg, video_token_id=291, image_token_id=290).eval()
    for p in model.parameters():
        if p.ndim == 1:
            p.data = 1 + 0.3 * torch.randn_like(p)
    return model


def qwen3_vl_sample(seed=0):
    """A Qwen3-VL prompt: one 6-frame 16x24 video (3 temporal steps of 2x3 tokens, each its own
    timestamped run) between text: positions differ per axis, so a wrong pair -> axis shows."""
    g = torch.Generator().manual_seed(seed)
    ids = [int(i) for i in torch.randint(0, 280, (3,), generator=g)]
    for step in range(3):
        ids += [100 + step, 292] + [291] * 6 + [293]
    ids += [int(i) for i in torch.randint(0, 280, (4,), generator=g)]
    return torch.tensor([ids]), [torch.rand(6, 3, 16, 24, generator=g)]


def test_full_rank_conversion_of_interleaved_mrope_is_exact_through_the_cli(tmp_path):
    from framelab.checkpoints import MODEL_KEY
    from framelab.models.config import ModelConfig
    from framelab.models.generation import decode
    model = tiny_qwen3_vl()
    ids, videos = qwen3_vl_sample()
    positions = model.prepare(ids, videos).positions
    assert not torch.equal(positions[1], positions[2])      # h and w really differ
    with torch.no_grad():
        ref = model(ids, videos).logits
    ref_tokens = decode(model, [ids[0].tolist()], max_new_tokens=6, videos=[videos]).tokens
    ckpt = tmp_path / "gqa.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                MODEL_KEY: {"module": "VideoLLMModule", "config": model.config.to_dict(),
                            "tokens": {"<|video_pad|>": 291, "<|image_pad|>": 290}}}, ckpt)
    cfg = model.config
    out = tmp_path / "mla.ckpt"
    assert main(["mla", "--ckpt", str(ckpt), "--rank", str(2 * cfg.kv_heads * cfg.head_dim),
                 "--rope-dims", str(cfg.head_dim // 2), "--out", str(out)]) == 0
    src = read_weights(str(out), "converted")
    new_cfg = ModelConfig.from_dict(src["spec"]["config"])
    assert new_cfg.attention == "mla" and new_cfg.mrope_interleaved
    assert new_cfg.vision.flavour == "qwen3_vl"
    mla = MultimodalLM(new_cfg, 291, 290).eval()
    mla.load_state_dict(src["state_dict"])
    with torch.no_grad():
        got = mla(ids, videos).logits
    diff = float((got - ref).abs().max())
    assert diff < 1e-4, diff
    # greedy decoding through the absorbed latent cache gives the GQA model's tokens
    assert decode(mla, [ids[0].tolist()], max_new_tokens=6, videos=[videos]).tokens == ref_tokens


def test_partial_rope_conversion_keeps_each_pairs_own_axis():
    """Below head_dim/2 the kept pairs are rotated by the angles of their own axis: the converted
    layer's rotary key equals the GQA key's rotated channels of those pairs."""
    from framelab.models.rope import pair_axes
    model = tiny_qwen3_vl(1)
    ids, videos = qwen3_vl_sample(1)
    inputs = model.prepare(ids, videos)
    cos, sin = model.lm.rotary(inputs.positions)
    attn = model.lm.layers[0].self_attn
    x = torch.randn(1, ids.shape[1], 64)
    from framelab.kernels import apply_rotary
    k = attn.k_norm(attn.k_proj(x).view(1, -1, 2, 16))
    k_rot = apply_rotary(k, cos, sin)                       # (B, S, G, head_dim), rotate-half
    mla = convert_layer(attn, rank=24, r=3, method="svd", acts=None)
    _, _, _, k_r = mla.project(x, cos, sin)
    k_r = k_r.view(1, -1, 2, 6)
    for g in range(2):
        pairs = mla.rope_pairs[g]
        expect = torch.cat([k_rot[:, :, g, pairs], k_rot[:, :, g, pairs + 8]], -1)
        torch.testing.assert_close(k_r[:, :, g], expect, atol=1e-6, rtol=1e-6)
    assert set(pair_axes(16, (2, 3, 3), True).tolist()) == {0, 1, 2}


def test_default_rope_pairs_follow_the_interleaved_layout():
    from framelab.models.attention import default_rope_pairs
    from framelab.models.rope import pair_axes
    axes = pair_axes(16, (2, 3, 3), interleaved=True)        # t h w t h w t h (as transformers)
    assert axes.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    pairs = default_rope_pairs(16, 6, (2, 3, 3), interleaved=True)
    assert pairs.tolist() == [0, 1, 2]                       # the highest frequency of t, h and w
    # the contiguous choice [0, 2, 5] would read t, w, w under this layout: h unseen
    assert sorted(axes[torch.tensor([0, 2, 5])].tolist()) == [0, 2, 2]
    axes = pair_axes(128, (24, 20, 20), interleaved=True)    # Qwen3-VL's text rotary
    pairs = default_rope_pairs(128, 64, (24, 20, 20), interleaved=True)
    assert torch.bincount(axes[pairs], minlength=3).tolist() == [12, 10, 10]
    for a in range(3):                                       # each axis: its lowest pairs
        assert pairs[axes[pairs] == a].tolist() == (axes == a).nonzero()[:, 0].tolist()[
            :[12, 10, 10][a]]
    assert default_rope_pairs(16, 16, (2, 3, 3), True).tolist() == list(range(8))
