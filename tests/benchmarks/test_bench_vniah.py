"""`framelab bench vniah --against`: the paired comparison of two agents on the same questions."""
import json

import pytest

from framelab.benchmarks.vniah import compare, paired_difference
from framelab.errors import UserError


def result(scores: list[float], lengths=(64, 512)) -> dict:
    qs = [{"length": lengths[i % len(lengths)], "depth": 0.5, "index": i, "kind": "what",
           "agent": s, "uniform": 0.0} for i, s in enumerate(scores)]
    return {"lengths": list(lengths), "depths": [0.5], "questions_per_cell": len(scores) // 2,
            "split": "test", "size": 32, "iou": 0.5, "questions": qs}


def test_paired_difference_counts_and_bounds_the_change():
    same = paired_difference([1, 0, 1, 0], [1, 0, 1, 0])
    assert same == {"diff": 0.0, "ci95": [0.0, 0.0], "better": 0, "worse": 0, "n": 4}
    up = paired_difference([1] * 30 + [0] * 10, [0] * 10 + [1] * 20 + [0] * 10)
    assert up["diff"] == pytest.approx(0.25) and (up["better"], up["worse"]) == (10, 0)
    assert 0.1 < up["ci95"][0] < 0.25 < up["ci95"][1] <= 0.4
    mixed = paired_difference([1, 0] * 20, [0, 1] * 20)
    assert mixed["ci95"][0] < 0 < mixed["ci95"][1] and mixed["better"] == mixed["worse"] == 20
    with pytest.raises(ValueError):
        paired_difference([1, 0], [1])


def test_compare_pairs_questions_by_cell_and_index():
    base = result([0, 0, 1, 1, 0, 0, 1, 1])
    mine = result([1, 1, 1, 1, 0, 0, 1, 1])
    mine["questions"].reverse()                       # pairing is by key, not by order
    out = compare(mine, json.loads(json.dumps(base)), "sft.json")
    assert out["all"]["diff"] == pytest.approx(0.25) and out["all"]["better"] == 2
    assert out["512_plus"]["n"] == 4 and out["512_plus"]["diff"] == pytest.approx(0.25)
    assert out["what"] == out["all"] and "when" not in out        # every row here is "what"
    short = compare(result([1, 1], lengths=(64,)), result([1, 0], lengths=(64,)), "b.json")
    assert "512_plus" not in short


@pytest.mark.parametrize("spoil", [
    lambda b: b.pop("questions"),                     # a JSON from before per-question rows
    lambda b: b.update(size=64),                      # other questions
    lambda b: b.update(questions_per_cell=8),
    lambda b: b["questions"][0].pop("agent"),
    lambda b: b["questions"][0].update(index=99),
])
def test_compare_refuses_other_questions_with_one_line(spoil):
    base = result([0, 1, 0, 1])
    spoil(base)
    with pytest.raises(UserError) as e:
        compare(result([1, 1, 0, 1]), base, "base.json")
    assert "--against base.json" in str(e.value) and "\n" not in str(e.value)


def test_a_bad_against_file_is_one_line_before_any_work(tmp_path, capsys):
    from framelab.cli import main
    bad, other = tmp_path / "v.json", tmp_path / "w.json"
    bad.write_text("{not json")
    other.write_text(json.dumps(result([1, 0])))      # 1 question per cell, lengths 64 and 512
    for path, says in ((bad, "cannot read it as JSON"), (other, "questions_per_cell=4")):
        assert main(["bench", "vniah", "--ckpt", str(tmp_path / "none.ckpt"), "--against",
                     str(path)]) == 2                 # refused before the checkpoint is read
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("framelab: error: --against") and says in err[0]


def test_names_copied_reads_the_query_and_the_check_notes_names():
    import numpy as np

    from framelab.agent.data import episode, expert_trajectory
    from framelab.benchmarks.vniah import names_copied

    for when_prob in (1.0, 0.0):
        ep = episode("train", 0, {"lengths": [512], "when_prob": when_prob})
        meta = ep["meta"]
        traj = expert_trajectory(ep, np.random.default_rng(0), miss_prob=1.0, note_form="checks")
        when = meta["format"] == "span"
        assert names_copied(traj, meta) == {"query": 1.0 if when else None, "checks": 1.0}
        asked = traj.turns[2].text.split("check: ")[1].split(",")[0].split()
        name = " ".join(asked[-3:-1])                                # the first item's name
        wrong = "pink blob" if name != "pink blob" else "grey blob"
        for t in traj.turns:
            t.text = t.text.replace(name, wrong)
            t.call = t.call.replace(name, wrong) if t.call else t.call
        got = names_copied(traj, meta)
        assert got["checks"] == (0.0 if when else 0.75)                # one of 1 / 4 per note
        assert got["query"] == (0.0 if when else None)
        listed = expert_trajectory(ep, np.random.default_rng(0), miss_prob=1.0)
        assert names_copied(listed, meta)["checks"] is None              # `seen:` notes
