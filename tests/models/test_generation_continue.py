"""continue_generation: appending tokens (and videos) to a finished generation and decoding on
with its KV cache equals generating from the whole concatenation from scratch."""
import pytest
import torch

from framelab.models import DecoderLM, MultimodalLM, preset
from framelab.models.generation import continue_generation, decode

VID = 500
MLA = dict(attention="mla", kv_lora_rank=24, qk_rope_dim=4, mrope_section=(2, 3, 3))


def text_model(attention, seed=0):
    torch.manual_seed(seed)
    return DecoderLM(preset("tiny", **(MLA if attention == "mla" else {}))).eval()


def multimodal(attention, seed=0):
    torch.manual_seed(seed)
    cfg = preset("tiny", vision={"width": 32, "depth": 1, "heads": 2, "patch_size": 8},
                 **(MLA if attention == "mla" else {}))
    return MultimodalLM(cfg, video_token_id=VID).eval()


def video(seed):
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))  # 8 tokens


def assert_same(got, ref):
    """Same tokens, and log-probs equal to 1e-5."""
    assert got.tokens == ref.tokens
    torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(ref.logprobs),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("attention", ["gqa", "mla"])
def test_text_continuation_equals_generating_the_concatenation(attention, use_cache):
    m = text_model(attention, 0)
    prompts = [[5, 9, 11, 3, 2, 8], [7, 1], [42]]
    stop = decode(m, prompts, 4).tokens[0][1]           # row 0 stops early: a gap in its cache
    first = decode(m, prompts, 4, stop_tokens=[stop], use_cache=use_cache)
    assert first.finished[0] and len(first.tokens[0]) == 2

    def scratch(history, n):
        return decode(m, [history], n, use_cache=use_cache)

    appended = [[3, 4], [5], None]
    second = continue_generation(m, first.state, appended, 5)
    for row in (0, 1):
        history = prompts[row] + first.tokens[row] + appended[row]
        ref = scratch(history, 5)
        assert second.tokens[row] == ref.tokens[0]
        torch.testing.assert_close(torch.tensor(second.logprobs[row]),
                                   torch.tensor(ref.logprobs[0]), atol=1e-5, rtol=1e-5)
    assert second.tokens[2] == [] and not second.finished[2] and not second.truncated[2]
    assert second.truncated[:2] == [True, True]
    # again: row 0 after two turns, row 2 resumed with nothing appended (its pending token only)
    third = continue_generation(m, second.state, [[6], None, []], 3)
    histories = {0: prompts[0] + first.tokens[0] + [3, 4] + second.tokens[0] + [6],
                 2: prompts[2] + first.tokens[2]}
    for row, history in histories.items():
        ref = scratch(history, 3)
        assert third.tokens[row] == ref.tokens[0]
        torch.testing.assert_close(torch.tensor(third.logprobs[row]),
                                   torch.tensor(ref.logprobs[0]), atol=1e-5, rtol=1e-5)
    assert third.tokens[1] == []


def test_sampled_continuation_logprobs_equal_a_teacher_forced_forward():
    m = text_model("gqa", 2)
    g = torch.Generator().manual_seed(0)
    first = decode(m, [[1, 2, 3], [4]], 3, temperature=0.9, top_k=40, generator=g)
    second = continue_generation(m, first.state, [[7, 8], [9]], 4, temperature=0.9, top_k=40,
                                 generator=g)
    for prompt, a, app, b, lps in zip([[1, 2, 3], [4]], first.tokens, [[7, 8], [9]],
                                      second.tokens, second.logprobs):
        seq = prompt + a + app + b
        with torch.no_grad():
            logits = m(torch.tensor([seq])).logits[0, len(seq) - len(b) - 1:-1]
        ref = torch.log_softmax(logits / 0.9, -1).gather(-1, torch.tensor(b)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(lps), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("attention", ["gqa", "mla"])
def test_multimodal_continuation_with_an_appended_video(attention, use_cache):
    mm = multimodal(attention, 3)
    prompts = [[1, 2] + [VID] * 8 + [3, 4], [7, 8, 9]]
    videos = [[video(0)], []]
    first = decode(mm, prompts, 3, videos=videos, use_cache=use_cache)
    appended = [[5] + [VID] * 8 + [6], [1] + [VID] * 8 + [2, 3]]    # a tool returns a clip
    more = [[video(1)], [video(2)]]
    second = continue_generation(mm, first.state, appended, 4, videos=more)
    for row in range(2):
        history = prompts[row] + first.tokens[row] + appended[row]
        ref = decode(mm, [history], 4, videos=[videos[row] + more[row]], use_cache=use_cache)
        assert second.tokens[row] == ref.tokens[0]
        torch.testing.assert_close(torch.tensor(second.logprobs[row]),
                                   torch.tensor(ref.logprobs[0]), atol=1e-5, rtol=1e-5)


def test_continuation_errors_are_one_line():
    m = text_model("gqa")
    first = decode(m, [[1, 2], [3]], 2)
    with pytest.raises(ValueError, match="appended has 1 rows"):
        continue_generation(m, first.state, [[4]], 2)
    with pytest.raises(ValueError, match="at least one row"):
        continue_generation(m, first.state, [None, None], 2)
    with pytest.raises(ValueError, match="takes no videos"):
        continue_generation(m, first.state, [[4], None], 2, videos=[[video(0)], []])
