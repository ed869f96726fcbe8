"""ViCuRDistillModule: the teacher scores exactly the student's sampled tokens under its own
(privileged) input, the cue reaches the teacher as text and as highlighted frames in the frames the
student saw, the released clamps apply, an SFT checkpoint starts the sink module fresh, and bad
settings are one line. Built without a datamodule: a tiny model and a character tokenizer."""
from types import SimpleNamespace

import pytest
import torch

import framelab.lightning_modules.policy as policy
from framelab.datamodules.special_tokens import IM_END, IM_START, PAD, VIDEO_PAD
from framelab.errors import UserError
from framelab.lightning_modules.vicur import ViCuRDistillModule, clip_cue, cue_text, highlighted
from framelab.models.config import ModelConfig, VisionConfig
from framelab.rl.losses import opd_advantages
from framelab.rl.rollout import rollout
from framelab.world.tasks.cue import highlight

TOKENS = {VIDEO_PAD: 5, PAD: 0, IM_END: 2, IM_START: 1}
END = 12                                  # where the user turn's <|im_end|> is in the prompts
MODEL = ModelConfig(vocab_size=64, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8,
                    intermediate=64, cue_recovery=1,
                    vision=VisionConfig(width=16, depth=1, heads=2, patch_size=8))


class CharTokenizer:
    """Each character one id in 10..59 (enough for the privileged texts)."""

    def encode(self, text, add_special_tokens=False):
        return SimpleNamespace(ids=[10 + ord(c) % 50 for c in text])

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def module(teacher="visual_cue", **kw) -> ViCuRDistillModule:
    torch.manual_seed(0)
    m = ViCuRDistillModule(model={}, teacher=teacher, rl={"group_size": 1, "max_new_tokens": 4},
                           opd=kw.pop("opd", None), **kw)
    m.tokenizer = CharTokenizer()
    m.install({"config": MODEL.to_dict(), "tokens": TOKENS})
    m.evaluator.tokenizer = m.tokenizer
    return m


def documents(n=2) -> list[dict]:
    """Prompts [<|im_start|> user text, 8 placeholders, <|im_end|> <|im_start|> assistant] with a
    4-frame video (the clip's frames 0, 2, 4, 6) and a cue in the clip's frames 2-5."""
    g = torch.Generator().manual_seed(1)
    docs = []
    for i in range(n):
        prompt = [1, 20 + i, 21] + [5] * 8 + [22, 2, 1, 23]
        cue = {"object": 3, "frames": [2, 3, 4, 5], "boxes": [[0.1, 0.2, 0.4, 0.5]] * 4}
        docs.append({"prompt": prompt, "videos": [torch.rand(4, 3, 32, 32, generator=g)],
                     "reference": [30 + i], "meta": {"cue": cue, "frame_indices": [0, 2, 4, 6],
                                                     "answer": "A", "format": "mcq"}})
    return docs


def sampled(m, docs):
    ro = rollout(m.model, [d["prompt"] for d in docs], [d["videos"] for d in docs], 1,
                 max_new_tokens=4, temperature=1.0, generator=torch.Generator().manual_seed(2),
                 stop_tokens=[2])
    ro.extra["doc"] = docs
    return ro


def spy_scoring(monkeypatch):
    """Record (model, packed inputs) of every teacher-forced scoring pass."""
    calls = []
    real = policy.completion_hidden

    def record(model, packed):
        calls.append((model, packed))
        return real(model, packed)
    monkeypatch.setattr(policy, "completion_hidden", record)
    return calls


def test_teacher_scores_exactly_the_students_tokens_under_its_own_input(monkeypatch):
    m = module("visual_cue")
    docs = documents()
    ro = sampled(m, docs)
    calls = spy_scoring(monkeypatch)
    loss, stats = m.chunk_loss(ro, None, None)
    (student, s_in), (teacher, t_in) = calls
    assert student is m.model and teacher is not m.model
    tokens = [t for c in ro.completions for t in c]
    assert s_in.targets.tolist() == tokens and t_in.targets.tolist() == tokens
    for row, (doc, completion) in enumerate(zip(docs, ro.completions)):
        text = m.tokenizer.encode(cue_text(clip_cue(doc["meta"]))).ids
        want = doc["prompt"][:END] + text + doc["prompt"][END:] + completion  # before <|im_end|>
        assert t_in.input_ids[row, :len(want)].tolist() == want
        assert s_in.input_ids[row, :len(doc["prompt"]) + len(completion)].tolist() == \
            doc["prompt"] + completion
    assert torch.equal(s_in.videos[0], docs[0]["videos"][0])
    assert torch.equal(t_in.videos[0], highlighted(docs[0]["videos"][0], clip_cue(docs[0]["meta"]),
                                                   0.25, 0.05))
    assert not torch.equal(t_in.videos[0], s_in.videos[0])
    assert torch.isfinite(loss) and stats["teacher_kl"] != 0.0   # the cue changes the teacher


def test_answer_teacher_sees_the_reference_and_the_original_video(monkeypatch):
    m = module("answer")
    docs = documents(1)
    ro = sampled(m, docs)
    calls = spy_scoring(monkeypatch)
    m.chunk_loss(ro, None, None)
    t_in = calls[1][1]
    hint = m.tokenizer.encode(f" Reference answer: {m.decode_text(docs[0]['reference'])}").ids
    assert t_in.input_ids[0, :END + len(hint)].tolist() == docs[0]["prompt"][:END] + hint
    assert torch.equal(t_in.videos[0], docs[0]["videos"][0])


def test_gjsd_form_trains_on_the_same_tokens():
    m = module("visual_cue", opd={"form": "gjsd", "beta": 0.5})
    ro = sampled(m, documents())
    loss, stats = m.chunk_loss(ro, None, None)
    loss.backward()
    assert loss.item() > 0 and "gjsd" in stats
    assert m.model.lm.embed_tokens.weight.grad.abs().sum() > 0


def test_cue_in_the_frames_the_student_saw():
    """Clip frames 2-5 visible; the student saw clip frames 0, 2, 4, 6: its frames 1 and 2."""
    cue = clip_cue(documents(1)[0]["meta"])
    assert cue["frames"] == [1, 2] and len(cue["boxes"]) == 2
    assert cue_text(cue).startswith(" Visual cue: the target is visible in frames 1 2;")
    video = torch.rand(4, 3, 32, 32)
    out = highlighted(video, cue, 0.25, 0.0)
    ref = highlight((video.permute(0, 2, 3, 1) * 255).round().byte().numpy(), cue, dim=0.25,
                    margin=0.0)
    assert torch.allclose(out, torch.from_numpy(ref).permute(0, 3, 1, 2).float() / 255)
    assert out[0].max() <= 0.26 and out[1, :, 8:14, 4:12].equal(
        (video[1, :, 8:14, 4:12] * 255).round() / 255)     # the box keeps its brightness


def test_released_clamps():
    s = torch.tensor([[-30.0, -1.0, -0.5]])
    t = torch.tensor([[-1.0, -25.0, -0.5]])
    adv = opd_advantages(s, t, logp_floor=-10.0, clamp=5.0)
    assert adv.tolist() == [[5.0, -5.0, 0.0]]
    assert opd_advantages(s, t, logp_floor=-10.0).tolist() == [[9.0, -9.0, 0.0]]
    assert opd_advantages(s, t).tolist() == [[29.0, -24.0, 0.0]]


def test_sft_checkpoint_starts_the_sink_module_fresh():
    m = module()
    m.init_from = "sft.ckpt"
    sft = {**MODEL.to_dict(), "cue_recovery": 0}
    m.check_init_spec({"module": "VideoLLMModule", "config": sft})
    assert sorted(m.init_parts) == ["lm", "projector", "vision"]    # every part but the sinks
    with pytest.raises(UserError, match="SARGenModule checkpoint"):
        m.check_init_spec({"module": "SARGenModule", "config": {}})


@pytest.mark.parametrize("kw, match", [
    ({"teacher": "oracle"}, "module.teacher='oracle'"),
    ({"teacher": "stronger"}, "module.teacher=stronger needs module.opd.teacher"),
    ({"cue": {"text": False, "frames": False}}, "shows the teacher no cue"),
    ({"cue": {"colour": 1}}, "module.cue has unknown keys"),
    ({"opd": {"teacher_prompt": "answer"}}, "set by module.teacher"),
    ({"opd": {"kl_clamp": -1}}, "module.opd.kl_clamp=-1"),
    ({"freeze": {"sink": True}}, "module.freeze has unknown parts"),
])
def test_bad_settings_are_one_line(kw, match):
    kw = {"model": {}, **kw}
    with pytest.raises(UserError, match=match) as err:
        ViCuRDistillModule(**kw)
    assert "\n" not in str(err.value)
