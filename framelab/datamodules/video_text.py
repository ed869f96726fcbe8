"""VideoTextDataModule: video (or image) + conversation samples as token sequences for a video LLM.

Per sample (in DataLoader workers): read the annotation and frames, choose frames (uniform / by fps /
all) under the current max-frames budget, resize to image_size -- or, with data.processor=qwen3_vl,
choose and resize them as Qwen3-VL's video processor does (`qwen3_vl_inputs`) -- count vision tokens
N = (T/2)(H/p/2)(W/p/2), and encode the conversation with the Qwen-style chat template (prompt
masked from the loss). Per step (main process): pack several samples into one row up to
max_tokens without cutting any (cu_seqlens), or pad a fixed number of samples per row.

Batch (dict): input_ids (B, S) long; labels (B, S) long, unshifted, -100 where no loss;
attention_mask (B, S) when not packed; cu_seqlens (n_docs + 1,) int32 when packed (B = 1; with
pad_to_multiple_of the padding is one extra trailing document); videos: list of (T, 3, H, W), T
even, in order of their vision blocks (text-only samples -- annotation num_frames 0, no media
placeholder -- have none): uint8 as they leave the loader when no float resampling was needed,
float32 in [0, 1] once `on_after_batch_transfer` has run (Lightning runs it on the device; plain
loops call `dm.on_after_batch_transfer(batch, 0)`); future_videos when load_future; sample_ids;
meta (task, answer, choices, spans, ... per sample); with perception_labels, vision_labels: per
video the dense ground-truth labels of its tokens (`perception_labels.clip_labels`; None for a
sample without ground truth), for the vision stage. A sample too long for max_tokens even at
2 frames is skipped as "too_long"; otherwise its frames are reduced until it fits.

The budgets live in shared memory: `set_max_frames(n)` and `set_max_tokens(n)` (e.g. from a
curriculum callback) reach running workers and the packer; items already decoded keep the budget
they were decoded with. Workers are never
persistent (each epoch's workers are configured with that epoch's start position).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from framelab.datamodules.base import StreamingDataModule, plain
from framelab.datamodules.chat import VIDEO_LAYOUTS, ChatEncoder, vision_tokens
from framelab.datamodules.collate import batch_size_plan, collate_packed, collate_padded, token_budget_plan
from framelab.datamodules.decode import (SAMPLING, FrameSource, annotation, as_float, frame_member,
                                        select_frames, to_tensor)
from framelab.datamodules.perception_labels import clip_labels
from framelab.datamodules.qwen3_vl_inputs import (QWEN3_VL_VIDEO, VisionPreprocess, frame_timestamps,
                                                   resize, sample_indices, video_size)
from framelab.datamodules.reader import SampleError
from framelab.datamodules.special_tokens import PAD, special_token_ids
from framelab.datamodules.tokenizer import ensure_tokenizer
from framelab.errors import UserError


class VideoTransform:
    """Worker-side: shard members -> tokenized item (see module docstring)."""

    def __init__(self, encoder: ChatEncoder, size: tuple[int, int], patch: int, sampling: str,
                 sample_fps: float, budget: torch.Tensor, pack: bool, load_future: bool,
                 perception: bool = False, processor: VisionPreprocess | None = None):
        self.encoder, self.size, self.patch = encoder, size, patch
        self.sampling, self.sample_fps, self.budget_tensor = sampling, sample_fps, budget
        self.pack, self.load_future, self.perception = pack, load_future, perception
        self.processor = processor

    def choose(self, source: FrameSource, fps, limit: int) -> tuple[list[int], tuple[int, int]]:
        """(frame indices, an even count; (height, width) they are resized to) under `limit` frames:
        frame_sampling and image_size, or the Qwen3-VL video processor's sampling (at most
        `limit` frames, evenly spaced) and smart_resize of the stored size."""
        if self.processor is None:
            return select_frames(source.count, self.sampling, limit, fps, self.sample_fps), self.size
        index = sample_indices(source.count, self.processor, fps)
        if len(index) > limit:
            index = sample_indices(source.count, self.processor, fps, max(2, limit - limit % 2))
        if len(index) < 2:
            index = index * 2                  # a one-frame video: the frame twice, as a step
        try:
            size = video_size(len(index), *source.frame_size(), self.processor)
        except UserError as e:
            raise SampleError("bad_frame", str(e)) from None
        return index + index[-1:] * (len(index) % 2), size

    def fill(self, ids: list, labels: list, source: FrameSource, fps, limit: int):
        """(index, size, ids, labels): the conversation with its video's placeholders (and, in the
        qwen3_vl layout, timestamps) for the frames `choose` picks under `limit`."""
        index, size = self.choose(source, fps, limit)
        times = [frame_timestamps(index, fps)] if self.encoder.video_layout == "qwen3_vl" else None
        ids, labels = self.encoder.fill_vision(
            ids, labels, [vision_tokens(len(index), *size, self.patch)], times)
        return index, size, ids, labels

    def pixels(self, frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> (T, 3, h, w) at `size`: uint8 when no resampling in float is
        needed (the datamodule's on_after_batch_transfer makes it float32 in [0, 1] on the
        device), else float32 in [0, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        if self.processor is None:
            return x if tuple(x.shape[-2:]) == tuple(size) else to_tensor(frames, size)
        return resize(x, *size)

    def wants(self, ext: str) -> bool:
        """Members read per sample: the annotation, the frames (and future frames when loaded)."""
        return (ext == "json" or frame_member(ext) or (self.load_future and frame_member(ext, "future."))
                or (self.perception and ext == "gt.npz"))

    def budget(self) -> tuple[int, int]:
        """(max frames, max tokens per packed row; 0 when not packing) in force now."""
        frames, tokens = self.budget_tensor.tolist()
        return frames, tokens if self.pack else 0

    def __call__(self, members: dict, ref, budget: tuple[int, int] | None = None) -> dict:
        ann = annotation(members)
        conv = ann.get("conversations")
        if not isinstance(conv, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in conv):
            raise SampleError("bad_json", "conversations must be a list of {role, content}")
        meta = {"task": ann.get("task"), "key": ref.key, "fps": ann.get("fps"), **(ann.get("meta") or {})}
        if ann.get("num_frames") == 0:      # text-only (e.g. the world's read task)
            return self._text_only(conv, meta, (budget or self.budget())[1])
        source = FrameSource(members, "", ann.get("num_frames"))
        limit, max_tokens = budget or self.budget()
        try:
            ids, labels = self.encoder.encode(conv, [0])
        except ValueError as e:
            raise SampleError("bad_conversation", str(e)) from None
        base = len(ids)
        if max_tokens and self.processor is None:
            per_pair = vision_tokens(2, *self.size, self.patch) + self.step_overhead()
            fit = 2 * ((max_tokens - base) // per_pair)
            if fit < 2:
                raise SampleError("too_long", f"{base} text tokens leave no room for 2 frames")
            limit = min(limit, fit)
        empty = (ids, labels)
        fill = lambda n: self.fill(*empty, source, ann.get("fps"), n)  # noqa: E731
        got = fill(limit)
        if max_tokens and len(got[2]) > max_tokens:   # the most frames that fit, by bisection
            lo, hi = 2, len(got[0]) - 2
            got = fill(lo)
            if len(got[2]) > max_tokens:
                raise SampleError("too_long", f"{len(got[2])} tokens at 2 frames exceed "
                                              f"max_tokens={max_tokens}")
            while lo < hi:
                mid = lo + 2 * (((hi - lo) // 2 + 1) // 2)
                trial = fill(mid)
                if len(trial[2]) <= max_tokens:
                    lo, got = mid, trial
                else:
                    hi = mid - 2
        index, size, ids, labels = got
        frames = source.get(index)
        video = self.pixels(frames, size)
        meta["frame_indices"] = index
        item = {"input_ids": np.asarray(ids, np.int32), "labels": np.asarray(labels, np.int32),
                "video": video, "num_tokens": len(ids), "meta": meta}
        if self.perception:  # only clips stored at the model's resolution: upscaled shapes blur
            native = tuple(frames.shape[1:3]) == tuple(size)
            item["vision_labels"] = clip_labels(members.get("gt.npz"), meta.get("objects"), index,
                                                size, self.patch) if native else None
        if self.load_future:
            try:
                future = FrameSource(members, "future.")
            except SampleError:
                raise SampleError("missing_future", "load_future is set but the sample has no future frames") from None
            pick = list(range(future.count)) + ([future.count - 1] if future.count % 2 else [])
            item["future"] = self.pixels(future.get(pick), size)
        return item

    def step_overhead(self) -> int:
        """Tokens a temporal step adds beyond its placeholders: 0, or in the qwen3_vl layout its
        `<t seconds>` text and its own vision start and end (counted for a 5-digit time)."""
        if self.encoder.video_layout != "qwen3_vl":
            return 0
        return len(self.encoder.step_blocks(0, [99999.9]))

    def _text_only(self, conv: list, meta: dict, max_tokens: int) -> dict:
        """A sample without video: its conversation must have no media placeholder."""
        if self.load_future:
            raise SampleError("missing_future", "load_future is set but the sample is text-only")
        try:
            ids, labels = self.encoder.encode(conv, [])
        except ValueError as e:
            raise SampleError("bad_conversation", str(e)) from None
        if max_tokens and len(ids) > max_tokens:
            raise SampleError("too_long", f"{len(ids)} text tokens exceed max_tokens={max_tokens}")
        return {"input_ids": np.asarray(ids, np.int32), "labels": np.asarray(labels, np.int32),
                "video": None, "num_tokens": len(ids), "meta": {**meta, "frame_indices": []}}


class VideoTextDataModule(StreamingDataModule):
    """Streams video-text shards as token batches; see the module docstring and configs/data/*.yaml."""

    def __init__(self, tasks=("describe",), task_params: dict | None = None, samples=None, shards: int = 4,
                 data_dir=None, cache_dir: str | None = None, test_splits=("test",),
                 frames_format: str = "npy", world_seed: int = 0, tokenizer_path: str | None = None,
                 tokenizer_vocab_size: int = 1024, system_prompt: str | None = None,
                 image_size=32, patch_size: int = 8, frame_sampling: str = "uniform",
                 max_frames: int = 16, sample_fps: float = 2.0, pack: bool = True,
                 max_tokens: int = 2048, max_samples_per_pack: int = 0, pad_to_multiple_of: int = 0,
                 batch_size: int = 4, load_future: bool = False, num_workers: int = 0, seed: int = 0,
                 shuffle: bool = True, max_skip_rate: float = 0.05, skip_check_after: int = 64,
                 weights: dict | None = None, perception_labels: bool = False,
                 video_layout: str = "framelab", processor: str | None = None, shuffle_window: int = 4,
                 cache_limit="50GB", fetch_timeout: float = 600.0, fetch_retries: int = 3):
        super().__init__(tasks=tasks, task_params=task_params, weights=weights,
                         samples=samples if samples is not None else {"train": 512, "val": 64, "test": 64, "ood": 64},
                         shards=shards, data_dir=data_dir, cache_dir=cache_dir, test_splits=test_splits,
                         frames_format=frames_format, world_seed=world_seed, seed=seed, shuffle=shuffle,
                         num_workers=num_workers, max_skip_rate=max_skip_rate, skip_check_after=skip_check_after,
                         shuffle_window=shuffle_window, cache_limit=cache_limit, fetch_timeout=fetch_timeout,
                         fetch_retries=fetch_retries)
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(plain(image_size))
        if any(s % (2 * patch_size) for s in self.image_size):
            raise UserError(f"data.image_size {self.image_size} must be a multiple of 2 x patch_size "
                            f"= {2 * patch_size} (temporal-spatial patches are merged 2x2)")
        if frame_sampling not in SAMPLING:
            raise UserError(f"data.frame_sampling {frame_sampling!r} unknown; choose one of {SAMPLING}")
        if pack and max_tokens <= 0:
            raise UserError("data.max_tokens must be > 0 when data.pack is true")
        self.patch_size, self.frame_sampling, self.sample_fps = patch_size, frame_sampling, sample_fps
        self.pack, self.max_samples_per_pack = pack, max_samples_per_pack
        self.pad_to_multiple_of, self.batch_size, self.load_future = pad_to_multiple_of, batch_size, load_future
        self.tokenizer_path, self.tokenizer_vocab_size = tokenizer_path, tokenizer_vocab_size
        self.system_prompt = system_prompt
        self.perception_labels = perception_labels
        if video_layout not in VIDEO_LAYOUTS:
            raise UserError(f"data.video_layout={video_layout!r}: choose one of "
                            f"{', '.join(VIDEO_LAYOUTS)}")
        self.video_layout = video_layout
        if processor not in (None, "qwen3_vl"):
            raise UserError(f"data.processor={processor!r}: choose null (frame_sampling and "
                            "image_size) or qwen3_vl (Qwen3-VL's video processor)")
        self.processor = processor
        self._budget = torch.tensor([max_frames, max_tokens], dtype=torch.int64).share_memory_()
        self._initial_budget = (max_frames, max_tokens)
        self._schedule: list[dict] | None = None
        self.tokenizer = None
        self.encoder: ChatEncoder | None = None
        self.special_ids: dict[str, int] = {}

    # tokenizer ------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        ensure_tokenizer(self.cache_dir, self.tokenizer_path, self.tokenizer_vocab_size)
        super().prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = ensure_tokenizer(self.cache_dir, self.tokenizer_path, self.tokenizer_vocab_size)
            self.special_ids = special_token_ids(self.tokenizer)
            self.encoder = ChatEncoder(self.tokenizer, self.system_prompt, self.video_layout)

    @property
    def vocab_size(self) -> int:
        if self.tokenizer is None:
            self.setup()
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self.special_ids[PAD]

    # budgets ----------------------------------------------------------------------------------
    @property
    def max_frames(self) -> int:
        return self._budget.tolist()[0]   # tolist: int() of a tensor element costs far more

    def set_max_frames(self, n: int) -> None:
        """Change the frame budget for samples decoded from now on (running workers included)."""
        if n < 2:
            raise UserError(f"max_frames must be >= 2, got {n}")
        self._budget[0] = int(n)

    @property
    def max_tokens(self) -> int:
        return self._budget.tolist()[1]

    def set_max_tokens(self, n: int) -> None:
        """Change the packed-row token budget for rows formed and samples decoded from now on."""
        if not self.pack:
            raise UserError("set_max_tokens needs data.pack=true (the budget is a packed row's size)")
        if n < 1:
            raise UserError(f"max_tokens must be >= 1, got {n}")
        self._budget[1] = int(n)

    def set_budget_schedule(self, phases: list[dict] | None) -> None:
        """Budgets by training batch: [{batch: b, max_frames: n, max_tokens: m}, ...] (a key left
        out or None keeps the previous phase's value; before the first phase, the configured
        ones). Batch b's budget is then a pure function of b, so resumed runs see exactly the
        uninterrupted run's batches (set by the curriculum callback; None: off)."""
        self._schedule = sorted((dict(p) for p in phases), key=lambda p: p["batch"]) if phases else None

    def _batch_budget(self):
        if not getattr(self, "_schedule", None):
            return lambda b: (self.max_frames, self.max_tokens if self.pack else 0)
        def budget(b: int) -> tuple[int, int]:
            frames, tokens = self._initial_budget
            for phase in self._schedule:
                if phase["batch"] > b:
                    break
                frames = phase.get("max_frames") or frames
                tokens = phase.get("max_tokens") or tokens
            self._budget[0], self._budget[1] = frames, tokens
            return frames, tokens if self.pack else 0
        return budget

    def video_processor(self) -> VisionPreprocess | None:
        """data.processor=qwen3_vl: the checkpoint directory's video_preprocessor_config.json (the
        directory of tokenizer_path, e.g. hf:DIR) when it has one, else the released Qwen3-VL
        checkpoints' settings."""
        if self.processor is None:
            return None
        cfg = QWEN3_VL_VIDEO
        path = str(self.tokenizer_path or "")
        folder = Path(path[len("hf:"):] if path.startswith("hf:") else path).expanduser()
        found = folder / "video_preprocessor_config.json"
        if path and folder.is_dir() and found.is_file():
            try:
                cfg = VisionPreprocess.from_hf(json.loads(found.read_text()))
            except (ValueError, TypeError) as e:
                raise UserError(f"{found}: not a usable video processor config ({e})") from None
        if cfg.patch_size != self.patch_size or cfg.merge_size != 2 or cfg.temporal_patch_size != 2:
            raise UserError(f"{found if found.is_file() else 'data.processor=qwen3_vl'}: patch "
                            f"{cfg.patch_size}, merge {cfg.merge_size}, temporal patch "
                            f"{cfg.temporal_patch_size}; the data needs patch "
                            f"{self.patch_size} (data.patch_size), merge 2, temporal patch 2")
        return cfg

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Frames travel as uint8 (a quarter of the bytes, no conversion in the workers) and
        become float32 in [0, 1] here, on the device (Lightning calls this after moving the batch;
        plain loops call it themselves)."""
        for key in ("videos", "future_videos"):
            if batch.get(key):
                batch[key] = [as_float(v) for v in batch[key]]
        return batch

    # pieces for the base class ----------------------------------------------------------------
    def _transform(self, split: str) -> VideoTransform:
        self.setup()
        return VideoTransform(self.encoder, self.image_size, self.patch_size, self.frame_sampling,
                              self.sample_fps, self._budget, self.pack, self.load_future,
                              self.perception_labels, self.video_processor())

    def _plan(self, train: bool):
        if self.pack:
            budget = self._budget
            return token_budget_plan(lambda: budget.tolist()[1], self.max_samples_per_pack)
        return batch_size_plan(self.batch_size)

    def _collate(self):
        pad_id, multiple = self.pad_id, self.pad_to_multiple_of
        if self.pack:
            return lambda items: collate_packed(items, pad_id, multiple)
        return lambda items: collate_padded(items, pad_id)
