"""VideoLLMModule: stage targets, freezing, init_from (weights only), evaluation scoring, and the
short-to-long curriculum changing the data budget mid-run and resuming exactly (in-process fits
on a small embedded-world stream)."""
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from framelab.callbacks.curriculum import ShortToLongCurriculum
from framelab.datamodules.special_tokens import IM_END, PAD, VIDEO_PAD
from framelab.datamodules.video_text import VideoTextDataModule
from framelab.errors import UserError
from framelab.lightning_modules.videollm import VideoLLMModule

VISION = {"width": 32, "depth": 1, "heads": 2, "patch_size": 8}
TOKENS = {VIDEO_PAD: 500, PAD: 0, IM_END: 2}


class Data:
    """Just what the module reads from a video-text datamodule to size its model."""
    vocab_size, special_ids, patch_size, tokenizer = 512, TOKENS, 8, None


def module(model=None, **kw):
    kw.setdefault("evaluation", {"generate": False})
    m = VideoLLMModule(model={"preset": "tiny", "vision": VISION, **(model or {})},
                       scheduler={"total_steps": 8}, **kw)
    return m


def built(**kw):
    m = module(**kw)
    m.install(m.model_config(Data(), None))
    return m


def test_stage_targets():
    ids = torch.tensor([[1, 500, 500, 7, 8, 0, 3, 9, 4, 0]])
    labels = torch.tensor([[-100, -100, -100, -100, 8, 0, -100, -100, 4, 0]])
    batch = {"input_ids": ids, "labels": labels, "cu_seqlens": torch.tensor([0, 6, 10])}
    assert torch.equal(built(stage="sft").targets(batch), labels)
    cpt = built(stage="cpt").targets(batch)
    # all text except vision placeholders, padding and each document's first token
    assert cpt.tolist() == [[-100, -100, -100, 7, 8, -100, -100, 9, 4, -100]]


def test_prompt_loss_weight_mixes_the_prompt_text_into_the_sft_loss():
    """w = 0: replies only; w = 1: every text token weighs the same, so the SFT loss is the CPT
    loss of the same batch; in between, the weighted mean of the two parts. Evaluation (not
    training) keeps the reply-only loss."""
    torch.manual_seed(0)
    batch = {"input_ids": torch.tensor([[1, 7, 8, 9, 3, 4, 1, 5, 6, 2]]),
             "labels": torch.tensor([[-100, -100, -100, 9, 3, -100, -100, -100, 6, 2]]),
             "cu_seqlens": torch.tensor([0, 6, 10]), "videos": []}
    losses, evaluated = {}, {}
    for stage, w in (("sft", 0.0), ("sft", 0.25), ("sft", 1.0), ("cpt", 0.0)):
        torch.manual_seed(0)                       # the same weights in every module
        m = built(stage=stage, prompt_loss_weight=w)
        m.train()
        losses[stage, w] = m.compute_loss(batch)[0]
        m.eval()
        evaluated[stage, w] = m.compute_loss(batch)[0]
    for w in (0.25, 1.0):
        assert torch.equal(evaluated["sft", w], losses["sft", 0.0])
    reply, total = losses["sft", 0.0], losses["cpt", 0.0]
    assert torch.allclose(losses["sft", 1.0], total, atol=1e-6)
    # 4 reply targets (9, 3, 6, 2) and 4 prompt targets (7, 8, 4, 5): cpt's mean is over all 8
    prompt = (total * 8 - reply * 4) / 4
    assert torch.allclose(losses["sft", 0.25], (reply * 4 + prompt * 0.25 * 4) / (4 + 1), atol=1e-6)
    assert not torch.allclose(losses["sft", 0.25], reply)
    with pytest.raises(UserError, match="prompt_loss_weight"):
        module(prompt_loss_weight=1.5)


def test_text_only_rows_still_give_every_trainable_parameter_a_gradient(monkeypatch):
    """A packed row of text-only samples (no videos) must not leave the vision tower without a
    gradient under DDP (every rank's reducer waits for every trainable parameter); in one process
    the tower keeps no gradient, so the optimizer skips it that step."""
    import framelab.lightning_modules.videollm as videollm

    batch = {"input_ids": torch.tensor([[1, 7, 8, 9, 3, 4]]),
             "labels": torch.tensor([[-100, -100, 8, 9, -100, 4]]),
             "cu_seqlens": torch.tensor([0, 4, 6]), "videos": []}
    for parallel in (False, True):
        monkeypatch.setattr(videollm, "data_parallel", lambda: parallel)
        m = built(stage="sft")
        m.train()
        loss, n = m.compute_loss(batch)
        loss.backward()
        assert n == 3
        vision = list(m.model.vision.parameters()) + list(m.model.projector.parameters())
        if parallel:
            missing = [k for k, p in m.model.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, missing
            assert all(float(p.grad.abs().sum()) == 0.0 for p in vision)
        else:
            assert all(p.grad is None for p in vision)
            assert m.model.lm.embed_tokens.weight.grad is not None


def test_freezing_removes_parts_from_the_optimizer():
    m = built(freeze={"vision": True, "projector": True})
    assert not any(p.requires_grad for p in m.model.vision.parameters())
    assert all(p.requires_grad for p in m.model.lm.parameters())
    opt = m.configure_optimizers()["optimizer"]
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in m.model.lm.parameters())
    with pytest.raises(UserError):
        module(freeze={"encoder": True})


def test_scoring_per_task_and_format():
    m = built()
    docs = [{"meta": {"task": "describe", "format": "mcq", "answer": "B"}},
            {"meta": {"task": "describe", "format": "mcq", "answer": "C"}},
            {"meta": {"task": "describe", "format": "open", "answer": "red"}},
            {"meta": {"task": "needle", "format": "span", "answer": "1.0-2.0", "spans": [[1.0, 2.0]]}}]
    m.evaluator.score("val", docs, ["The answer is B", "no idea", "Red", "1.0-3.0"])
    got = {k: float(v) for k, v in m.evaluator.compute().items()}
    assert got == pytest.approx({"val/mcq_acc/describe": 0.5, "val/accuracy": 2 / 3,
                                 "val/open_acc/describe": 1.0, "val/tiou/needle": 0.5})


class Probe(Callback):
    """Records, per training step, the frames of the batch's videos and the curriculum phase."""

    def __init__(self):
        self.frames, self.theta, self.ids, self.tokens = {}, {}, {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.frames[trainer.global_step] = max(v.shape[0] for v in batch["videos"])
        self.ids[trainer.global_step] = list(batch["sample_ids"])
        self.tokens[trainer.global_step] = batch["input_ids"].flatten().tolist()
        self.theta[trainer.global_step] = pl_module.model.lm.config.rope_theta


def datamodule(cache, num_workers=0):
    return VideoTextDataModule(tasks=["describe"], task_params={"describe": {"frames": 16}},
                               samples={"train": 96, "val": 8, "test": 0, "ood": 0},
                               cache_dir=str(cache), max_frames=16, max_tokens=256, shards=1,
                               num_workers=num_workers)


def fit(tmp_path, cache, steps, ckpt_path=None, num_workers=0, phases=None, **mod):
    probe = Probe()
    phases = phases or [{"step": 0, "max_frames": 4, "max_tokens": 200},
                        {"step": 3, "max_frames": 16, "max_tokens": 400, "rope_theta": 1.0e5}]
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1,
                           filename="s{step}", auto_insert_metric_name=False)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu",
                        callbacks=[ShortToLongCurriculum(phases), probe, ckpt])
    m = module(**mod)
    trainer.fit(m, datamodule=datamodule(cache, num_workers), ckpt_path=ckpt_path)
    return probe, m, trainer


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("world")


def test_curriculum_changes_budget_mid_run_and_resumes_exactly(tmp_path, cache):
    torch.manual_seed(0)
    full, m_full, _ = fit(tmp_path / "a", cache, 6)
    # the budgets are keyed to the batch: phase 1 starts exactly at step 3
    assert max(full.frames[s] for s in range(3)) <= 4 and min(full.frames[s] for s in (3, 4, 5)) > 4
    assert max(len(full.tokens[s]) for s in range(3)) <= 200
    assert max(len(full.tokens[s]) for s in (3, 4, 5)) > 200
    assert all(len(full.tokens[s]) <= 400 for s in (3, 4, 5))
    assert full.theta[5] == 1.0e5 and full.theta[0] == 1.0e6
    # resume from step 2, before the phase change, with worker processes decoding ahead under the
    # old budget: every batch (samples, frames, packing, token ids) equals the uninterrupted run's
    resumed, m_res, _ = fit(tmp_path / "b", cache, 6, ckpt_path=str(tmp_path / "a/ckpt/s2.ckpt"),
                            num_workers=1)
    assert sorted(resumed.frames) == [2, 3, 4, 5]
    for s in (2, 3, 4, 5):
        assert resumed.ids[s] == full.ids[s], s
        assert resumed.tokens[s] == full.tokens[s], s
        assert resumed.frames[s] == full.frames[s], s
    assert {s: full.theta[s] for s in (3, 4, 5)} == {s: resumed.theta[s] for s in (3, 4, 5)}


def test_a_curriculum_freeze_stops_a_part_from_its_phase_on_and_holds_on_resume(tmp_path, cache):
    phases = [{"step": 0, "max_frames": 4, "max_tokens": 200},
              {"step": 3, "freeze": ["vision"]}]
    fit(tmp_path / "a", cache, 6, phases=phases)
    state = {s: torch.load(tmp_path / f"a/ckpt/s{s}.ckpt", weights_only=True)["state_dict"]
             for s in (2, 4, 6)}
    part = lambda sd, name: {k: v for k, v in sd.items() if k.startswith(f"model.{name}.")}  # noqa: E731
    changed = lambda a, b: any(not torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert changed(part(state[2], "vision"), part(state[4], "vision"))     # step 2 still trains it
    assert not changed(part(state[4], "vision"), part(state[6], "vision"))  # frozen from step 3
    assert changed(part(state[4], "lm"), part(state[6], "lm"))
    # resumed inside the frozen phase: the part stays frozen, the rest goes on exactly
    fit(tmp_path / "b", cache, 6, phases=phases, ckpt_path=str(tmp_path / "a/ckpt/s4.ckpt"))
    resumed = torch.load(tmp_path / "b/ckpt/s6.ckpt", weights_only=True)["state_dict"]
    assert not changed(part(state[4], "vision"), part(resumed, "vision"))
    assert not changed(part(state[6], "lm"), part(resumed, "lm"))
    with pytest.raises(UserError, match="unknown parts"):
        built().set_frozen(["tower"])


def test_text_documents_takes_the_whole_text_only_documents_that_fit():
    from framelab.lightning_modules.videollm import text_documents
    v = 500
    docs = [[1, v, v, 7, 8], [1, 3, 4], [1, 5, 6, 9], [1, 2]]      # video, text, text, text
    labels = [[-100, -100, -100, -100, 8], [-100, -100, 4], [-100, 6, 9, -100], [-100, -100]]
    cu = torch.tensor([0, 5, 8, 12, 14], dtype=torch.int32)
    batch = {"input_ids": torch.tensor([sum(docs, [])]), "labels": torch.tensor([sum(labels, [])]),
             "cu_seqlens": cu}
    text = text_documents(batch, v, 7)     # doc 3 has no label: nothing to learn
    assert text["input_ids"].tolist() == [[1, 3, 4, 1, 5, 6, 9]]
    assert text["labels"].tolist() == [[-100, -100, 4, -100, 6, 9, -100]]
    assert text["cu_seqlens"].tolist() == [0, 3, 7]
    assert text_documents(batch, v, 4)["cu_seqlens"].tolist() == [0, 3]    # doc 2 does not fit
    assert text_documents(batch, v, 2) is None and text_documents(batch, v, 0) is None


def test_set_max_tokens_changes_the_packed_row_budget(cache):
    dm = datamodule(cache)
    dm.prepare_data()
    dm.setup("fit")
    rows = iter(dm.train_dataloader())
    assert len(next(rows)["input_ids"][0]) <= 256
    dm.set_max_tokens(600)
    longest = max(len(next(rows)["input_ids"][0]) for _ in range(4))
    assert 256 < longest <= 600
    with pytest.raises(UserError, match="max_tokens"):
        dm.set_max_tokens(0)


def test_init_from_loads_weights_only(tmp_path, cache):
    _, cpt, trainer = fit(tmp_path / "cpt", cache, 2, stage="cpt")
    src = tmp_path / "cpt/ckpt/s2.ckpt"
    m = module(stage="sft", init_from=str(src))
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        limit_val_batches=0, accelerator="cpu")
    dm = datamodule(cache)
    trainer.strategy.connect(m)
    m.trainer = trainer
    trainer.datamodule = dm
    m.setup("fit")
    for (k, a), b in zip(cpt.model.state_dict().items(), m.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    bad = module(init_from=str(tmp_path / "missing.ckpt"))
    bad.trainer = trainer
    with pytest.raises(UserError, match="no such file"):
        bad.setup("fit")
    mla = module(model={"attention": "mla"}, init_from=str(src))
    mla.trainer = trainer
    with pytest.raises(UserError, match="attention"):
        mla.setup("fit")


class LetterTokenizer:
    """Stand-in tokenizer: every option letter is one token (id 10 + index)."""

    def encode(self, text, add_special_tokens=False):
        return type("E", (), {"ids": [10 + "ABCD".index(text)]})()


def test_mcq_scored_by_option_letter_logprob():
    """evaluation.mcq=score: the letter with the highest logit right after each prompt is the
    reply; the denominator is every MCQ document of the batch."""
    m = built()
    m.evaluator.tokenizer = LetterTokenizer()
    hidden = torch.zeros(1, 10, m.config.hidden)
    w = m.model.lm.output_weight.detach()
    hidden[0, 2] = w[12] * 10          # doc 0: prompt ends at 2 -> "C"
    hidden[0, 6] = w[10] * 10          # doc 1: prompt ends at 6 -> "A"
    docs = [{"row": 0, "start": 3, "meta": {"task": "describe", "format": "mcq", "answer": "C"}},
            {"row": 0, "start": 7, "meta": {"task": "describe", "format": "mcq", "answer": "B"}}]
    replies = m.evaluator.choose_letters(m.model, hidden, docs)
    assert replies == ["C", "A"]
    m.evaluator.score("val", docs, replies)
    assert float(m.evaluator.compute()["val/mcq_acc/describe"]) == pytest.approx(0.5)
    with pytest.raises(UserError):
        module(evaluation={"mcq": "logits"})


def test_rationale_mcq_is_generated_even_when_letters_are_scored():
    """A "rationale" MCQ reply ("red (B)") cannot be scored by the letter right after the prompt:
    evaluate() sends it to generation (with evaluation.generate=false too) and extract_choice
    reads the letter; bare-letter MCQ stays scored and open answers stay skipped."""
    m = built()
    ev = m.evaluator
    ev.tokenizer = LetterTokenizer()
    m.log = lambda *a, **k: None
    docs = [{"meta": {"task": "describe", "format": "mcq", "answer": "B", "reply": "letter"}},
            {"meta": {"task": "describe", "format": "mcq", "answer": "C", "reply": "rationale"}},
            {"meta": {"task": "describe", "format": "open", "answer": "red"}}]
    m.loss_and_hidden = lambda batch: (torch.tensor(0.0), 1, None)
    ev.documents = lambda batch: docs
    ev.choose_letters = lambda model, hidden, ds: ["B" for _ in ds]
    generated = []
    ev.answer = lambda model, ds: generated.extend(ds) or ["green (C)" for _ in ds]
    m.evaluate({}, 1, "val")
    assert generated == [docs[1]]
    got = ev.compute()
    assert float(got["val/mcq_acc/describe"]) == 1.0
    assert "val/open_acc/describe" not in got


def test_rationale_replies_also_score_the_named_option():
    from framelab.evaluation import extract_named

    assert extract_named("Answer: red B") == "red" and extract_named("3 (A)") == "3"
    assert extract_named("Answer: B") is None and extract_named("(C)") is None
    m = built()
    meta = {"task": "describe", "format": "mcq", "reply": "rationale", "qtype": "colour"}
    docs = [{"meta": {**meta, "answer": "B", "answer_text": "red"}},
            {"meta": {**meta, "answer": "C", "answer_text": "blue"}}]
    m.evaluator.score("val", docs, ["Answer: red (C)", "Answer: blue (C)"])   # right name, wrong letter
    got = {k: float(v) for k, v in m.evaluator.compute().items()}
    assert got["val/mcq_acc/describe"] == 0.5
    assert got["val/mcq_named_acc/describe"] == 1.0
    assert got["val/mcq_named_acc/describe/colour"] == 1.0


def test_vision_keys_left_null_come_from_the_init_from_checkpoint():
    from framelab.lightning_modules.video_qa import world_model_spec
    theirs = built(model={"vision": {**VISION, "stem": "cnn"}}).model_spec
    spec = world_model_spec({"preset": "tiny", "vision": {"stem": None, "depth": 2}}, Data(),
                            theirs, (VIDEO_PAD, PAD, IM_END))
    assert spec["config"]["vision"]["stem"] == "cnn"          # null here: the checkpoint's
    assert spec["config"]["vision"]["width"] == VISION["width"]
    assert spec["config"]["vision"]["depth"] == 2             # set here: this run's
