"""VideoQAEvaluator: documents of a packed batch, which questions are scored by option letter and
which are generated, metric names and values (exact match, letters, named options, tIoU), sample
text, predictions, and metrics that agree across a data-parallel group."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from framelab.datamodules.special_tokens import IM_END, PAD, VIDEO_PAD
from framelab.errors import UserError
from framelab.evaluation import ExactMatch, VideoQAEvaluator, evaluation_config, exact_match
from framelab.models.config import VisionConfig, preset
from framelab.models.multimodal import MultimodalLM

TOKENS = {VIDEO_PAD: 500, PAD: 0, IM_END: 2}
DESCRIBE = {"task": "describe", "key": "k0", "turns": [
    {"format": "mcq", "reply": "letter", "answer": "C", "qtype": "colour"},
    {"format": "mcq", "reply": "rationale", "answer": "B", "answer_text": "red", "qtype": "colour"},
    {"format": "open", "answer": "red", "qtype": "colour"}]}
NEEDLE = {"task": "needle", "key": "k1", "format": "span", "answer": "1.0-2.0",
          "spans": [[1.0, 2.0]]}
CAPTION = {"task": "caption", "key": "k2", "format": "caption", "answer": "a red circle"}


class LetterTokenizer:
    """Stand-in tokenizer: every option letter is one token (id 10 + index); ids decode to
    themselves."""

    def encode(self, text, add_special_tokens=False):
        return type("E", (), {"ids": [10 + "ABCD".index(text)]})()

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def batch(video=False):
    """One packed row: a three-question describe sample (its first video run when `video`), a
    needle "when" question, a caption, then padding."""
    v = [500, 500] if video else [5, 5]
    describe = [1, *v, 7, 40, 11, 2, 8, 21, 12, 2, 9, 22, 2]
    describe_labels = [-100] * 5 + [11, 2] + [-100] + [21, 12, 2] + [-100] + [22, 2]
    needle, needle_labels = [1, 7, 8, 30, 2], [-100, -100, -100, 30, 2]
    caption, caption_labels = [1, 6, 31, 2], [-100, -100, 31, 2]
    ids = describe + needle + caption + [0, 0]
    labels = describe_labels + needle_labels + caption_labels + [-100, -100]
    cu = [0, len(describe), len(describe) + 5, len(describe) + 9, len(ids)]
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
            "cu_seqlens": torch.tensor(cu, dtype=torch.int32),
            "videos": ["video0"] if video else [], "meta": [DESCRIBE, NEEDLE, CAPTION]}


def tiny_model():
    torch.manual_seed(0)
    vision = VisionConfig(width=32, depth=1, heads=2, patch_size=8)
    return MultimodalLM(preset("tiny", vocab_size=512, vision=vision), TOKENS[VIDEO_PAD]).eval()


def test_documents_split_a_packed_row_per_reply():
    docs = VideoQAEvaluator(TOKENS).documents(batch(video=True))
    assert [d["start"] for d in docs] == [5, 8, 12, 17, 21]
    assert [d["reference"] for d in docs] == [[11, 2], [21, 12, 2], [22, 2], [30, 2], [31, 2]]
    assert docs[1]["prompt"] == [1, 500, 500, 7, 40, 11, 2, 8]
    assert docs[2]["prompt"] == batch(video=True)["input_ids"][0, :12].tolist()
    assert [d["videos"] for d in docs] == [["video0"]] * 3 + [[], []]
    assert docs[1]["meta"] == {**DESCRIBE, **DESCRIBE["turns"][1]}
    assert docs[3]["meta"] == NEEDLE and docs[3]["prompt"] == [1, 7, 8] and docs[3]["row"] == 0
    # unpacked rows (no cu_seqlens): one sample per row, starts counted within the row
    rows = {"input_ids": torch.tensor([[1, 7, 30, 2], [1, 8, 31, 0]]),
            "labels": torch.tensor([[-100, -100, 30, 2], [-100, -100, 31, -100]]),
            "meta": [NEEDLE, CAPTION]}
    docs = VideoQAEvaluator(TOKENS).documents(rows)
    assert [(d["row"], d["start"], d["reference"]) for d in docs] == [(0, 2, [30, 2]), (1, 2, [31])]


@pytest.mark.parametrize("reply,answer,want", [
    ("Red ", "red", True), ("reddish", "red", False), ("red.", "red", True),
    ("Answer: red", "red", True), ("The answer is Red.", "red", True), ("2", "two", False),
    ("answering machine", "Answering machine", True), ("Answer", "answer", True),
    ("", "", False), (None, "red", False), ("red", None, False),
])
def test_exact_match_normalisation(reply, answer, want):
    assert exact_match(reply, answer) is want


def test_exact_match_metric_counts_every_question():
    m = ExactMatch()
    m.update(["Red ", "reddish", ""], ["red", "red", "blue"])
    assert float(m.compute()) == pytest.approx(1 / 3)
    assert {k: v.item() for k, v in m.metric_state.items()} == {"correct": 1.0, "total": 3.0}


def test_score_names_and_values():
    ev = VideoQAEvaluator(TOKENS)
    colour = {"task": "describe", "qtype": "colour"}
    docs = [{"meta": {**colour, "format": "mcq", "reply": "letter", "answer": "B"}},
            {"meta": {"task": "describe", "qtype": "count", "format": "mcq", "answer": "C"}},
            {"meta": {**colour, "format": "mcq", "reply": "rationale", "answer": "C",
                      "answer_text": "red"}},
            {"meta": {**colour, "format": "open", "answer": "red"}},
            {"meta": {**colour, "format": "open", "answer": "red"}},
            {"meta": NEEDLE}, {"meta": CAPTION}, {"meta": {"format": None}}]
    replies = ["The answer is B", "no idea", "Answer: red (B)", "Red ", "reddish", "1.0-3.0",
               "a circle", "x"]
    ev.score("val", docs, replies)
    got = {k: float(v) for k, v in ev.compute().items()}
    assert got == pytest.approx({
        "val/mcq_acc/describe": 1 / 3,            # right, unanswered, wrong letter
        "val/mcq_acc/describe/colour": 0.5, "val/mcq_acc/describe/count": 0.0,
        "val/mcq_named_acc/describe": 1.0, "val/mcq_named_acc/describe/colour": 1.0,
        "val/open_acc/describe": 0.5, "val/open_acc/describe/colour": 0.5,
        "val/tiou/needle": 0.5,
        "val/accuracy": 2 / 5})                   # 3 MCQ + 2 open questions
    assert ev.compute() == {}                     # reset


def test_letters_are_scored_and_the_rest_generated():
    """mcq=score: the bare-letter MCQ takes the letter with the highest logit right after its
    prompt; the rationale MCQ is generated (with generate=false too); open and "when" questions
    are generated only with generate=true; captions never."""
    model, b = tiny_model(), batch()
    w = model.lm.output_weight.detach()
    hidden = torch.zeros(1, b["input_ids"].shape[1], model.config.hidden)
    hidden[0, 4] = w[12] * 10                     # the letter MCQ's prompt ends at 4 -> "C"
    for cfg, generated in (({"generate": False}, [8]), ({"generate": True}, [8, 12, 17]),
                           ({"mcq": "generate"}, [5, 8, 12, 17])):
        ev = VideoQAEvaluator(TOKENS, LetterTokenizer(), cfg)
        asked = []
        ev.answer = lambda model, docs: asked.extend(d["start"] for d in docs) or ["x"] * len(docs)
        docs, replies = ev.evaluate(model, b, hidden, "val")
        assert asked == generated, cfg
        assert [d["start"] for d in docs] == sorted({5, 8} | set(generated))
        assert len(replies) == len(docs)
        if cfg.get("mcq", "score") == "score":
            assert replies[0] == "C"
            assert float(ev.compute()["val/mcq_acc/describe/colour"]) == 0.5
    ev = VideoQAEvaluator(TOKENS, None, {"generate": False})   # no tokenizer: letters generated
    ev.answer = lambda model, docs: ["C"] * len(docs)
    assert len(ev.evaluate(model, b, None, "val")[0]) == 2


def test_generation_predictions_and_sample_text():
    model, b = tiny_model(), batch()
    ev = VideoQAEvaluator(TOKENS, None, {"max_new_tokens": 3, "log_samples": 1})
    hidden = model.hidden_states(b["input_ids"], None, b["cu_seqlens"])
    docs, replies = ev.evaluate(model, b, hidden, "test")
    assert len(docs) == 4 and all(isinstance(r, str) for r in replies)
    assert all(len(r.split()) <= 3 for r in replies)
    assert set(ev.compute()) >= {"test/mcq_acc/describe", "test/open_acc/describe",
                                 "test/tiou/needle", "test/accuracy"}
    text = ev.samples_text(docs, replies)
    assert text == f"**Q** (describe): 1 5 5 7 40  \n**model**: {replies[0]}  \n**reference**: 11"
    preds = ev.predictions(model, b)
    assert [(p["key"], p["task"], p["answer"]) for p in preds] == [
        ("k0", "describe", "C"), ("k0", "describe", "B"), ("k0", "describe", "red"),
        ("k1", "needle", "1.0-2.0"), ("k2", "caption", "a red circle")]
    assert preds[0]["reply"] == replies[0]        # greedy: the same reply as in evaluate


def test_config_mistakes_are_one_line():
    assert evaluation_config(None) == {"mcq": "score", "generate": True, "max_new_tokens": 12,
                                       "log_samples": 4}
    with pytest.raises(UserError, match="mcq='logits'"):
        VideoQAEvaluator(TOKENS, config={"mcq": "logits"})
    with pytest.raises(UserError, match="unknown keys"):
        evaluation_config({"max_tokens": 4})


def ranked_compute(rank: int, port: int, out) -> None:
    """One process of a 2-process group: each sees a task the other does not."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    ev = VideoQAEvaluator(TOKENS)
    task = {"task": ["describe", "needle"][rank], "format": "open", "answer": "red"}
    ev.score("val", [{"meta": task}] * 2, ["red", "blue"] if rank else ["red", "red"])
    out[rank] = {k: float(v) for k, v in ev.compute().items()}
    dist.destroy_process_group()


@pytest.mark.slow
def test_metrics_agree_across_a_data_parallel_group():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.get_context("spawn").Manager().dict()
    mp.spawn(ranked_compute, args=(port, out), nprocs=2)
    want = {"val/accuracy": 0.75, "val/open_acc/describe": 1.0, "val/open_acc/needle": 0.5}
    assert out[0] == out[1] == pytest.approx(want)
