"""Rollouts: the behaviour log-probs are the policy's own (teacher-forced scoring reproduces them),
the generator alone decides the samples, and a multi-turn rollout masks the tool's result."""
import torch

from framelab.models import MultimodalLM, preset
from framelab.rl.logprobs import completion_hidden, pack, token_logprobs
from framelab.rl.rollout import Rollout, rollout, suppressed
from framelab.rl.sampling import collect, informative_groups

VID = 500


def model(seed=0):
    torch.manual_seed(seed)
    cfg = preset("tiny", vision={"width": 32, "depth": 1, "heads": 2, "patch_size": 8})
    return MultimodalLM(cfg, video_token_id=VID).eval()


def video(seed):
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))  # 8 tokens


PROMPTS = [[5, 9] + [VID] * 8 + [11, 3], [7, 1, 4]]
VIDEOS = [[video(0)], []]


def scored(m, ro: Rollout, temperature: float):
    packed = pack(ro.prompts, ro.completions, ro.videos, "cpu")
    with torch.no_grad():
        logp, ent = token_logprobs(completion_hidden(m, packed), m.lm.output_weight, packed,
                                   temperature, entropy=True, suppress_tokens=suppressed(m))
    return logp, ent, packed.mask


def test_behaviour_logprobs_equal_teacher_forced_scoring():
    m = model()
    ro = rollout(m, PROMPTS, VIDEOS, 3, max_new_tokens=10, temperature=0.7,
                 generator=torch.Generator().manual_seed(1), stop_tokens=[17])
    assert len(ro) == 6 and ro.group == [0, 0, 0, 1, 1, 1]
    assert all(len(c) == 10 or c[-1] == 17 for c in ro.completions)
    assert all(t == (len(c) == 10 and c[-1] != 17) for t, c in zip(ro.truncated, ro.completions))
    logp, ent, mask = scored(m, ro, 0.7)
    behaviour = torch.zeros_like(logp).masked_scatter(
        mask, torch.tensor([x for lp in ro.logprobs for x in lp]))
    torch.testing.assert_close(logp, behaviour, atol=1e-4, rtol=1e-4)
    assert bool((ent[mask] > 0).all()) and bool((logp[~mask] == 0).all())


def test_the_generator_alone_decides_the_samples():
    m = model()
    runs = [rollout(m, PROMPTS, VIDEOS, 4, max_new_tokens=8, generator=torch.Generator()
                    .manual_seed(s)).completions for s in (3, 3, 4)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert len({tuple(c) for c in runs[0][:4]}) > 1          # a group's samples differ


def test_a_tool_result_is_appended_masked_and_decoding_continues():
    m = model()
    first = rollout(m, PROMPTS, VIDEOS, 1, max_new_tokens=1, temperature=0.0).completions
    call = first[0][0]                       # row 0's greedy first token stands for "</tool_call>"
    seen = []

    def tool(i, completion):
        seen.append((i, list(completion)))
        return ([30, 31, 32, VID, VID, VID, VID, VID, VID, VID, VID, 33], [video(9)]) if i == 0 \
            else None

    ro = rollout(m, PROMPTS, VIDEOS, 1, max_new_tokens=6, temperature=0.0, tool=tool,
                 tool_stop=call, max_turns=2)
    assert seen[0] == (0, [call])
    c, mask = ro.completions[0], ro.loss_mask[0]
    assert c[:13] == [call, 30, 31, 32] + [VID] * 8 + [33] and len(c) > 13
    assert mask[:13] == [True] + [False] * 12 and all(mask[13:])
    assert ro.turns[0] == 2 and len(ro.videos[0]) == 2
    # the continuation is what greedy decoding of the whole concatenation gives, and scoring the
    # finished sequence reproduces the behaviour log-probs of the sampled tokens
    logp, _, packed_mask = scored(m, ro, 1.0)
    sampled = torch.tensor(mask)
    behaviour = torch.tensor(ro.logprobs[0])
    torch.testing.assert_close(logp[0, :len(c)][sampled], behaviour[sampled], atol=1e-4, rtol=1e-4)
    again = rollout(m, [PROMPTS[0] + c[:13]], [[video(0), video(9)]], 1,
                    max_new_tokens=len(c) - 13, temperature=0.0)
    assert again.completions[0] == c[13:]


def test_max_total_cuts_and_marks_truncated():
    m = model()
    ro = rollout(m, PROMPTS, VIDEOS, 2, max_new_tokens=10, temperature=1.0,
                 generator=torch.Generator().manual_seed(0), max_total=len(PROMPTS[0]) + 4)
    assert [len(c) for c in ro.completions[:2]] == [4, 4] and ro.truncated[:2] == [True, True]
    assert all(len(lp) == len(c) for lp, c in zip(ro.logprobs, ro.completions))


def test_dynamic_sampling_keeps_informative_groups_over_rounds():
    rewards = torch.tensor([1.0, 1, 1, 1, 0, 1, 0, 0, 0.5, 0.5, 0.5, 0.5])
    assert informative_groups(rewards, 4).tolist() == [False, True, False]
    acc = torch.tensor([1.0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 1])
    assert informative_groups(acc, 4, 0.1, 0.9).tolist() == [True, False, True]

    m = model()
    calls = []

    def roll(batch):
        calls.append(list(batch))
        ro = rollout(m, [PROMPTS[1]] * len(batch), None, 2, max_new_tokens=2,
                     generator=torch.Generator().manual_seed(len(calls)))
        ro.extra["reward"] = [float(b % 2 == 0) * (j % 2) for b in batch for j in range(2)]
        return ro

    keep = lambda r: informative_groups(torch.tensor(r.extra["reward"]), 2)  # noqa: E731
    ro, stats = collect(roll, list(range(10)), want=3, max_rounds=5, keep=keep)
    # prompts 0, 2, 4, ... are informative: rounds of 3 prompts until 3 groups are kept
    assert calls == [[0, 1, 2], [3, 4, 5]]
    assert stats == {"rounds": 2, "groups_sampled": 6, "groups_kept": 3, "groups_dropped": 3}
    assert len(ro) == 6 and ro.group == [0, 0, 1, 1, 2, 2]
    assert ro.extra["reward"] == [0.0, 1.0] * 3
    _, stats = collect(roll, list(range(10)), want=3, max_rounds=1, keep=keep)
    assert stats["rounds"] == 1 and stats["groups_kept"] == 2
