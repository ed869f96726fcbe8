"""Task generators: determinism, split seeds, answers consistent with ground truth."""
import numpy as np
import pytest

from framelab.world.scene import SPLIT_STRIDE, SPLITS, sample_seed
from framelab.world.tasks import TASKS, make_sample
from framelab.world.tasks.common import LETTERS, RATIONALE_SUFFIX
from framelab.world.tasks.cue import highlight
from framelab.world.vocab import COLOUR_NAMES, DIRECTIONS, HELD_OUT_PAIRS, SHAPES, class_id, region_of


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_from_split_and_index(task):
    a, b = make_sample(task, "train", 5), make_sample(task, "train", 5)
    assert np.array_equal(a.frames, b.frames) and a.conversation == b.conversation and a.meta == b.meta
    c = make_sample(task, "val", 5)
    assert not np.array_equal(a.frames, c.frames) or a.conversation != c.conversation


def test_split_seed_ranges_are_disjoint():
    seeds = {s: {sample_seed(s, i) for i in range(0, SPLIT_STRIDE, SPLIT_STRIDE // 1000)} for s in SPLITS}
    for i, s in enumerate(SPLITS):
        for t in SPLITS[:i]:
            assert not seeds[s] & seeds[t]
    with pytest.raises(ValueError):
        sample_seed("train", SPLIT_STRIDE)


@pytest.mark.parametrize("task", [t for t in TASKS if t not in ("read", "choose")])  # text only
def test_conversation_and_answer_shape(task):
    for i in range(12):
        s = make_sample(task, "train", i)
        user, reply = s.conversation
        assert user["role"] == "user" and reply["role"] == "assistant"
        assert user["content"].startswith("<video>" if task != "images" else "<image>")
        assert s.frames.dtype == np.uint8 and s.frames.ndim == 4
        if s.meta.get("format") == "mcq":
            assert reply["content"] in LETTERS
            assert s.meta["choices"][LETTERS.index(reply["content"])] == s.meta["answer_text"]
            assert len(set(s.meta["choices"])) == 4
        else:
            assert reply["content"] == s.meta["answer"]


def test_ood_asks_about_held_out_pairs_and_in_domain_never_does():
    for i in range(20):
        for task in ("describe", "needle", "future", "images"):
            s = make_sample(task, "ood", i)
            o = s.meta["objects"][0] if task != "images" else s.meta
            assert (o["shape"], o["colour"]) in HELD_OUT_PAIRS
            s = make_sample(task, "train", i)
            objs = s.meta["objects"] if task != "images" else [s.meta]
            assert not any((o["shape"], o["colour"]) in HELD_OUT_PAIRS for o in objs)


def test_needle_grid_span_and_visibility():
    params = {"lengths": [64, 2048], "depths": [0.0, 0.5, 1.0]}
    s = make_sample("needle", "train", 5, params)  # cell 5: length 2048, depth 1.0
    assert s.meta["length"] == 2048 and s.meta["depth"] == 1.0 and len(s.frames) == 2048
    t0, t1 = s.meta["needle_frames"]
    assert t1 == 2048 and s.gt["visible"][:, 0].sum() == t1 - t0
    assert s.meta["spans"] == [[t0 / s.fps, t1 / s.fps]]
    s0 = make_sample("needle", "train", 0, params)
    assert s0.meta["needle_frames"][0] == 0


def test_future_keeps_future_frames_and_answers_from_ground_truth():
    kinds = set()
    for i in range(30):
        s = make_sample("future", "train", i)
        seen, ahead = s.meta["observed"], s.meta["future"]
        assert s.frames.shape[0] == seen and s.extra_frames["future"].shape[0] == ahead
        assert s.meta["hint"].startswith("After the clip")
        kinds.add(s.meta["qtype"])
        if s.meta["qtype"] == "region":
            k = int(s.conversation[0]["content"].split(" be in ")[1].split(" frames")[0])
            x, y = s.gt["pos"][seen - 1 + k, 0]
            assert region_of(x, y) == s.meta["answer_text"]
    assert kinds == {"region", "collide", "wall"}


def test_cue_evidence_matches_target_and_highlight():
    s = make_sample("cue", "train", 3)
    cue = s.meta["cue"]
    assert cue["frames"] == np.flatnonzero(s.gt["visible"][:, cue["object"]]).tolist()
    assert s.meta["objects"][cue["object"]]["size"] == "small"
    same = [o for o in s.meta["objects"] if o["shape"] == s.meta["objects"][cue["object"]]["shape"]]
    assert sum(o["size"] == "small" for o in same) == 1
    teacher = highlight(s.frames, cue)
    assert teacher.shape == s.frames.shape and teacher.sum() < s.frames.sum()


def test_images_label_is_class_of_object():
    s = make_sample("images", "train", 2, {"size": 32})
    assert s.frames.shape == (1, 32, 32, 3)
    assert s.meta["label"] == class_id(s.meta["shape"], s.meta["colour"])


def test_describe_turns_never_give_away_a_later_answer():
    """Multi-question describe clips: distinct question types, all MCQ or all open, and no turn's
    text (question, options or reply) names the answer of a later turn."""
    for reply in ("letter", "rationale"):
        for i in range(60):
            s = make_sample("describe", "train", i, {"questions": 3, "mcq_reply": reply},
                            render=False)
            turns = s.meta["turns"]
            assert 2 <= len(turns) == len(s.conversation) // 2 <= 3
            assert len({t["qtype"] for t in turns}) == len(turns)
            assert not {"colour", "shape"} <= {t["qtype"] for t in turns}
            assert len({t["format"] for t in turns}) == 1
            # each turn's question line and reply (options list every answer on purpose)
            said = [c["content"].replace("<video>\n", "").split("\n")[0] for c in s.conversation]
            for j, turn in enumerate(turns[1:], start=1):
                earlier = " ".join(said[:2 * j]).replace("?", " ").replace(",", " ")
                assert f" {turn['answer_text']} " not in f" {earlier} ", (i, j, earlier)
    with pytest.raises(ValueError):
        make_sample("describe", "train", 0, {"questions": 4}, render=False)


def test_rationale_reply_names_the_option_then_its_letter():
    from framelab.evaluation import extract_choice
    seen = 0
    for i in range(40):
        s = make_sample("describe", "train", i, {"questions": 3, "mcq_prob": 1.0,
                                                 "mcq_reply": "rationale"}, render=False)
        for turn, user, reply in zip(s.meta["turns"], s.conversation[0::2], s.conversation[1::2]):
            # question, instruction, then the options: the reply follows the option list
            lines = user["content"].replace("<video>\n", "").split("\n")
            assert lines[1] == RATIONALE_SUFFIX
            assert lines[2:] == [f"{L}. {c}" for L, c in zip(LETTERS, turn["choices"])]
            assert turn["reply"] == "rationale"
            assert reply["content"] == f"Answer: {turn['answer_text']} {turn['answer']}"
            assert extract_choice(reply["content"]) == turn["answer"]
            assert turn["choices"][LETTERS.index(turn["answer"])] == turn["answer_text"]
            seen += 1
    assert seen >= 80
    with pytest.raises(ValueError):
        make_sample("describe", "train", 0, {"mcq_reply": "essay"}, render=False)


def test_read_is_text_only_and_its_answers_are_in_the_description():
    """read: no frames, no media placeholder; the first turn opens with the description, every
    answer follows from it (colour/shape/direction of the named object, the object count)."""
    seen = set()
    for i in range(60):
        s = make_sample("read", "train", i, {"mcq_reply": "rationale"})
        assert s.frames is None and s.annotation()["num_frames"] == 0
        text = s.conversation[0]["content"].split("\n")[0]
        assert text.startswith("The video shows ") and "<" not in s.conversation[0]["content"]
        objs = s.meta["objects"]
        turns = s.meta["turns"]
        assert len(turns) == len(s.conversation) // 2 and len({t["qtype"] for t in turns}) == len(turns)
        for turn, reply in zip(turns, s.conversation[1::2]):
            obj = objs[turn["target"]]
            expected = {"colour": obj["colour"], "shape": obj["shape"], "count": str(len(objs)),
                        "direction": obj["direction"]}[turn["qtype"]]
            assert turn["answer_text"] == expected
            assert reply["content"] == f"Answer: {expected} {turn['answer']}"
            assert turn["choices"][LETTERS.index(turn["answer"])] == expected
            if turn["qtype"] != "count":
                assert f" {expected}" in text
            seen.add(turn["qtype"])
        for o in objs:
            named = f"{o['colour']} {o['shape']}" + (f" moving {o['direction']}" if o["direction"] else "")
            assert named in text
    assert seen == {"colour", "shape", "count", "direction"}
    assert make_sample("read", "train", 0, {"questions": 1}, render=False).meta["turns"][0]
    with pytest.raises(ValueError):
        make_sample("read", "train", 0, {"questions": 5})


def test_caption_names_every_object_left_to_right_with_its_start_direction():
    """caption: the reply is read's sentence for the clip -- every object by colour and shape, in
    order of its x at the first frame, with "moving <d>" exactly when its start direction is clear,
    and that direction agrees with its ground-truth displacement."""
    for i in range(40):
        s = make_sample("caption", "train", i, {"size": 64})
        assert s.frames.shape == (8, 64, 64, 3) and s.conversation[0]["content"].startswith("<video>")
        text = s.conversation[1]["content"]
        assert text == s.meta["answer"] and text.startswith("The video shows ") and text.endswith(".")
        objs, pos = s.meta["objects"], s.gt["pos"]
        order = np.argsort(pos[0, :, 0])
        at = [text.index(f"{objs[j]['colour']} {objs[j]['shape']}") for j in order]
        assert at == sorted(at) and len(objs) == text.count(" a ") + text.count(" an ")
        for j in order:
            name = f"{objs[j]['colour']} {objs[j]['shape']}"
            tail = text[text.index(name) + len(name):]
            if tail.startswith(" moving "):
                d = tail.split()[1].strip(",.")
                dx, dy = pos[4, j] - pos[0, j]
                horizontal = abs(dx) > abs(dy)
                assert {"left": horizontal and dx < 0, "right": horizontal and dx > 0,
                        "up": not horizontal and dy < 0, "down": not horizontal and dy > 0}[d]


def test_choose_quotes_one_option_and_the_reply_gives_its_line():
    """choose: text only; each turn quotes one of its four distinct options, and the reply names
    it and then the letter of its line; the quoted words range over the world's vocabulary."""
    quoted = set()
    for i in range(60):
        s = make_sample("choose", "train", i, {"questions": 2})
        assert s.frames is None and s.annotation()["num_frames"] == 0
        for turn, (user, reply) in zip(s.meta["turns"], zip(s.conversation[::2], s.conversation[1::2])):
            word = user["content"].split('"')[1]
            assert turn["answer_text"] == word and len(set(turn["choices"])) == 4
            assert f"\n{turn['answer']}. {word}\n" in user["content"] + "\n"
            assert reply["content"] == f"Answer: {word} {turn['answer']}"
            quoted.add(word)
    assert len(quoted) > 40


def test_choose_answers_drills_describe_answer_words_among_options_of_one_kind():
    """choose with words=answers: the quoted word and its distractors are all colours, all shapes,
    all directions or all counts -- describe's option lists -- and every such word comes up."""
    kinds = [set(COLOUR_NAMES), set(SHAPES), set(DIRECTIONS), {str(k) for k in range(1, 7)}]
    quoted = set()
    for i in range(150):
        s = make_sample("choose", "train", i, {"words": "answers"})
        for turn in s.meta["turns"]:
            assert sum(set(turn["choices"]) <= kind for kind in kinds) == 1
            quoted.add(turn["answer_text"])
    assert quoted == set().union(*kinds)
    with pytest.raises(ValueError, match="words"):
        make_sample("choose", "train", 0, {"words": "nouns"})


def test_choose_never_lists_a_word_in_two_turns_of_a_sample():
    """A word listed again under another letter in a later turn gives the lookup two lines to copy
    from (it then did not form); a sample asking more questions than its words allow is refused."""
    for words, k in (("all", 4), ("answers", 4)):
        for i in range(40):
            s = make_sample("choose", "train", i, {"words": words, "questions": k})
            listed = [w for turn in s.meta["turns"] for w in turn["choices"]]
            assert len(s.meta["turns"]) == k and len(listed) == len(set(listed))
    with pytest.raises(ValueError, match="runs out of words"):
        make_sample("choose", "train", 0, {"words": "answers", "questions": 6})

