"""VideoTextDataModule batches: chat template and masks, vision-token counts, packing, budgets."""
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from framelab.datamodules.chat import IGNORE, ChatEncoder, vision_tokens
from framelab.datamodules.special_tokens import (IM_END, IM_START, SPECIAL_TOKENS, VIDEO_PAD, VISION_END,
                                                 VISION_START)
from framelab.datamodules.tokenizer import load_tokenizer
from framelab.datamodules.video_text import VideoTextDataModule
from framelab.errors import UserError


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def make_dm(cache, **kw):
    base = dict(tasks=["describe"], samples={"train": 16, "val": 4}, shards=2, cache_dir=cache,
                max_frames=6, max_tokens=200)
    dm = VideoTextDataModule(**{**base, **kw})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def blocks(ids, sid):
    """(start, end) of each vision block in a flat id list."""
    starts = [i for i, t in enumerate(ids) if t == sid[VISION_START]]
    ends = [i for i, t in enumerate(ids) if t == sid[VISION_END]]
    return list(zip(starts, ends))


def test_vision_token_formula():
    assert vision_tokens(8, 32, 32, 8) == 4 * 2 * 2
    assert vision_tokens(2, 64, 96, 8) == 1 * 4 * 6
    with pytest.raises(ValueError):
        vision_tokens(3, 32, 32, 8)


def test_chat_masks_prompt_and_trains_reply(cache):
    dm = make_dm(cache)
    enc, sid = dm.encoder, dm.special_ids
    conv = [{"role": "user", "content": "<video>\nWhat colour is the ring?"},
            {"role": "assistant", "content": "red"}]
    ids, labels = enc.encode(conv, [12])
    assert ids.count(sid[VIDEO_PAD]) == 12 and ids[0] == sid[IM_START]
    assert enc.fill_vision(*enc.encode(conv, [0]), [12]) == (ids, labels)
    trained = [t for t, lab in zip(ids, labels) if lab != IGNORE]
    assert dm.tokenizer.decode(trained[:-1]) == "red" and trained[-1] == sid[IM_END]
    assert all(lab in (IGNORE, t) for t, lab in zip(ids, labels))
    # no placeholder: the video goes to the start of the first user turn
    ids2, _ = enc.encode([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "yo"}], [4])
    assert ids2.count(sid[VIDEO_PAD]) == 4
    gen, _ = ChatEncoder(dm.tokenizer, "be brief").encode(conv[:1], [4], add_generation_prompt=True)
    assert dm.tokenizer.decode(gen, skip_special_tokens=False).endswith("<|im_start|>assistant\n")


def test_packed_batches_match_contract(cache):
    dm = make_dm(cache)
    sid = dm.special_ids
    seen = []
    for batch in dm.train_dataloader():
        assert all(v.dtype == torch.uint8 for v in batch["videos"])  # frames travel as bytes...
        batch = dm.on_after_batch_transfer(batch, 0)                  # ...and become float on the device
        ids, labels, cu = batch["input_ids"], batch["labels"], batch["cu_seqlens"]
        assert ids.shape[0] == 1 and labels.shape == ids.shape and cu.dtype == torch.int32
        assert int(cu[-1]) == ids.shape[1] <= dm.max_tokens
        assert len(cu) - 1 == len(batch["sample_ids"]) == len(batch["videos"]) == len(batch["meta"])
        flat = ids[0].tolist()
        spans = blocks(flat, sid)
        assert len(spans) == len(batch["videos"])
        for (s, e), video, a, b in zip(spans, batch["videos"], cu[:-1].tolist(), cu[1:].tolist()):
            t, c, h, w = video.shape
            assert t % 2 == 0 and c == 3 and (h, w) == (32, 32) and video.dtype == torch.float32
            assert 0.0 <= float(video.min()) and float(video.max()) <= 1.0
            assert e - s - 1 == vision_tokens(t, h, w, 8)
            assert a <= s < e < b  # every block inside its own document: no sample is cut
            assert flat[a] == sid[IM_START] and flat[b - 2] == sid[IM_END]
        seen += batch["sample_ids"]
        dm.on_before_batch_transfer(batch, 0)
    assert sorted(seen) == sorted(f"describe_train_{i:09d}" for i in range(16))


def test_text_only_samples_pack_beside_videos(cache):
    """read samples (no video) share packed rows with describe clips: no vision block, no entry in
    `videos`, loss on their replies; every video still lines up with its block."""
    dm = make_dm(cache, tasks=["describe", "read"], max_tokens=600,
                 task_params={"read": {"questions": 2}})
    sid = dm.special_ids
    tasks = []
    for batch in dm.train_dataloader():
        ids, labels, cu = batch["input_ids"][0].tolist(), batch["labels"][0], batch["cu_seqlens"].tolist()
        spans = blocks(ids, sid)
        assert len(spans) == len(batch["videos"])
        for k, meta in enumerate(batch["meta"]):
            a, b = cu[k], cu[k + 1]
            inside = [s for s, _ in spans if a <= s < b]
            assert len(inside) == (0 if meta["task"] == "read" else 1)
            assert int((labels[a:b] != IGNORE).sum()) > 0
            tasks.append(meta["task"])
    assert tasks.count("read") == 16 and tasks.count("describe") == 16


def test_a_row_that_starts_with_a_text_only_sample_keeps_its_videos_labels():
    from framelab.datamodules.collate import collate_packed
    text = {"_key": "read", "meta": {}, "video": None, "input_ids": [1, 2], "labels": [-100, 2]}
    clip = {"_key": "describe", "meta": {}, "video": torch.zeros(2, 3, 8, 8), "input_ids": [3],
            "labels": [3], "vision_labels": {"count": 1}}
    batch = collate_packed([text, clip], pad_id=0)
    assert batch["vision_labels"] == [{"count": 1}]
    assert "vision_labels" not in collate_packed([text], pad_id=0)


def test_padded_batches_and_frame_budget_change(cache):
    dm = make_dm(cache, pack=False, batch_size=3, max_tokens=0)
    it = iter(dm.train_dataloader())
    batch = next(it)
    assert batch["input_ids"].shape[0] == 3 and "cu_seqlens" not in batch
    lengths = batch["attention_mask"].sum(1)
    assert all(batch["input_ids"][r, lengths[r]:].eq(dm.pad_id).all() for r in range(3))
    assert {v.shape[0] for v in batch["videos"]} == {6}
    dm.set_max_frames(2)
    batch = next(it)
    assert {v.shape[0] for v in batch["videos"]} == {2}


def test_long_samples_get_fewer_frames_to_fit(cache):
    dm = make_dm(cache, max_frames=64, max_tokens=72, task_params={"describe": {"frames": 16}},
                 max_skip_rate=1.0)
    frames = []
    for batch in dm.train_dataloader():
        assert batch["input_ids"].shape[1] <= 72
        frames += [v.shape[0] for v in batch["videos"]]
    assert min(frames) < 16 and max(frames) == 16
    assert len(frames) + sum(dm.state.reasons.values()) == 16


def test_future_frames_and_image_size(cache):
    dm = make_dm(cache, tasks=["future"], load_future=True, image_size=64, max_tokens=400)
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["future_videos"]) == len(batch["videos"])
    assert batch["future_videos"][0].shape == (12, 3, 64, 64)
    assert batch["meta"][0]["hint"].startswith("After the clip")


def test_local_tokenizer_gets_special_tokens(tmp_path):
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "red": 1, "ring": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)
    assert all(loaded.token_to_id(t) is not None for t in SPECIAL_TOKENS)
    assert loaded.encode("red ring").ids == [1, 2]


def test_world_tokenizer_puts_the_letter_right_after_the_option_text():
    """The rationale reply's option text is the very token of its option line, and its letter is
    the next token: the tokenizer is trained on both reply formats (see world.tasks.common)."""
    from framelab.datamodules.tokenizer import train_world_tokenizer

    tok = train_world_tokenizer()
    for text, letter in [("red", "B"), ("3", "C"), ("diamond", "A"), ("left", "D")]:
        option = tok.encode(f"What is it?\nA. x\n{letter}. {text}", add_special_tokens=False).ids
        reply = tok.encode(f"Answer: {text} {letter}", add_special_tokens=False).ids
        assert reply[-2] == option[-1]
        assert tok.decode([reply[-1]]) == f" {letter}"


def test_task_weights_set_each_task_share_of_the_training_stream(cache):
    """data.weights scales a task's train samples (the stream's mixture); evaluation splits keep
    their counts; a world task's weight may stand for a task not in the mixture (unused), while an
    unknown task or a negative weight is one clear error."""
    dm = make_dm(cache, tasks=["describe", "read"], max_tokens=600, weights={"read": 2.5},
                 task_params={"read": {"questions": 2}})
    tasks = [m["task"] for batch in dm.train_dataloader() for m in batch["meta"]]
    assert tasks.count("read") == 40 and tasks.count("describe") == 16
    evaluated = [m["task"] for batch in dm.val_dataloader() for m in batch["meta"]]
    assert evaluated.count("read") == 4 and evaluated.count("describe") == 4
    VideoTextDataModule(tasks=["describe", "read"], cache_dir=cache, weights={"future": 2})
    for bad in ({"futures": 2}, {"read": -1}):
        with pytest.raises(UserError, match="data.weights"):
            VideoTextDataModule(tasks=["describe", "read"], cache_dir=cache, weights=bad)
