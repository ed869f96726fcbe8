"""`framelab bench lookup`: the forced reply names the right option and the letter read after it is
scored against the sample's own answer, in both prompt variants."""
import re
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from framelab.benchmarks import lookup
from framelab.cli import main
from framelab.datamodules.special_tokens import SPECIAL_TOKENS
from framelab.world.tasks import read


@pytest.fixture(scope="module")
def tok():
    corpus = [m["content"] for i in range(40) for m in
              read.make("train", i, {"mcq_reply": "rationale"}, render_frames=False).conversation]
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(corpus + ["user assistant A B C D"], trainers.BpeTrainer(
        vocab_size=600, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return t


class Reader:
    """A stand-in model that reads its prompt as text: `lookup=True` gives the letter of the option
    line that holds the named word of the last question; otherwise always "A"."""

    def __init__(self, tok, lookup: bool):
        self.tok, self.lookup = tok, lookup

    def __call__(self, x):
        text = self.tok.decode(x[0].tolist(), skip_special_tokens=False)
        named = text.rsplit("Answer: ", 1)[1]
        question = text.rsplit("<|im_start|>user\n", 1)[1]
        letter = "A"
        if self.lookup:
            line = rf"^([ABCD])\. {re.escape(named)}(?:$|<\|im_end\|>)"
            letter = re.search(line, question, re.M).group(1)
        logits = torch.zeros(1, x.shape[1], self.tok.get_vocab_size())
        logits[0, -1, self.tok.encode(" " + letter, add_special_tokens=False).ids[0]] = 1.0
        return SimpleNamespace(logits=logits)


def test_a_model_that_looks_the_name_up_scores_one_and_a_constant_scores_its_share(tok):
    rates, counts = lookup.measure(Reader(tok, lookup=True), tok, "test", 12)
    assert set(counts) >= {"colour", "shape", "count"} and sum(counts.values()) >= 30
    for variant in ("with_description", "without_description"):
        assert all(r == 1.0 for r in rates[variant].values()), rates
    rates, _ = lookup.measure(Reader(tok, lookup=False), tok, "test", 12)
    share = {}
    for qtype, _, _, letter in lookup.conversations("test", 12):
        share.setdefault(qtype, []).append(letter == "A")
    expected = {q: sum(v) / len(v) for q, v in share.items()}
    assert rates["with_description"] == pytest.approx(expected)
    assert rates["without_description"] == pytest.approx(expected)
    assert any(0 < v < 1 for v in expected.values())


def test_the_variants_differ_only_by_the_description():
    _, variants, _, _ = next(lookup.conversations("test", 1))
    with_d = variants["with_description"][0]["content"]
    without = variants["without_description"][0]["content"]
    assert with_d.startswith("The video shows") and with_d.endswith(without)
    assert "The video shows" not in without


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert main(["bench", "lookup", "--ckpt", str(tmp_path / "none.ckpt")]) == 2
    assert "no such file" in capsys.readouterr().err
