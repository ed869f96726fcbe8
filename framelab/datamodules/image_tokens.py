"""ImageTokenDataModule: images -> discrete token grids + class labels, for set-autoregressive
(and any other discrete) image generation.

The image tokenizer is a PatchVQ fitted once on the training images and saved with the data
(`<train shards>/vq-<K>-p<p>-<size>.npz` for the embedded world, `<cache_dir>/vq-<hash>...npz` for
real shards), or a pretrained PatchVQ given by `vq_path` (another kind: a subclass that sets
`image_tokenizer`; no file can name code to run). The grids of a local shard set are computed once
(token_grids.py); remote images are encoded as they are read.
Batch: tokens (B, h*w) long, row-major grid; labels (B,) long class ids (annotation meta.label);
sample_ids. A step whose samples on this rank are all corrupt yields B = 0.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from framelab.datamodules.base import StreamingDataModule
from framelab.datamodules.collate import batch_size_plan, collate_image_tokens
from framelab.datamodules.decode import FrameSource, annotation, frame_member, to_tensor
from framelab.datamodules.reader import SampleError
from framelab.datamodules.token_grids import ensure_grids
from framelab.datamodules.vq import PatchVQ, load_image_tokenizer
from framelab.errors import UserError
from framelab.world.vocab import NUM_CLASSES


class ImageTransform:
    """Worker-side: shard members -> {"tokens", "label"}; with `grids` (token_grids.py) the tokens
    are looked up and the image is not read at all."""

    def __init__(self, tokenizer, size: int, grids=None):
        self.tokenizer, self.size, self.grids = tokenizer, size, grids

    def wants(self, ext: str) -> bool:
        return ext == "json" or (self.grids is None and frame_member(ext))

    def image(self, members: dict) -> np.ndarray:
        """The sample's first frame as uint8 (1, size, size, 3)."""
        frame = FrameSource(members).get([0])
        if frame.shape[1:3] == (self.size, self.size):
            return frame
        x = to_tensor(frame, (self.size, self.size))
        return (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()

    def __call__(self, members: dict, ref) -> dict:
        ann = annotation(members)
        label = (ann.get("meta") or {}).get("label")
        if not isinstance(label, int):
            raise SampleError("no_label", "annotation meta.label must be an integer class id")
        if self.grids is not None:
            return {"tokens": self.grids.lookup(ref), "label": label}
        return {"tokens": self.tokenizer.encode(self.image(members))[0], "label": label}


class ImageTokenDataModule(StreamingDataModule):
    """Streams class-labelled images as VQ token grids; see the module docstring."""

    def __init__(self, task_params: dict | None = None, samples=None, shards: int = 4, data_dir=None,
                 cache_dir: str | None = None, test_splits=("test",), frames_format: str = "npy",
                 world_seed: int = 0, image_size: int = 32, vq_patch: int = 4, codebook_size: int = 256,
                 vq_path: str | None = None, vq_factory: str | None = None, fit_samples: int = 1024,
                 fit_iters: int = 20, num_classes: int | None = None, batch_size: int = 32,
                 num_workers: int = 0, seed: int = 0, shuffle: bool = True, max_skip_rate: float = 0.05,
                 skip_check_after: int = 64, shuffle_window: int = 4, cache_limit="50GB",
                 fetch_timeout: float = 600.0, fetch_retries: int = 3):
        params = dict(task_params or {})
        params.setdefault("size", image_size)
        super().__init__(tasks=["images"], task_params={"images": params},
                         samples=samples if samples is not None else {"train": 4096, "val": 256, "test": 256, "ood": 256},
                         shards=shards, data_dir=data_dir, cache_dir=cache_dir, test_splits=test_splits,
                         frames_format=frames_format, world_seed=world_seed, seed=seed, shuffle=shuffle,
                         num_workers=num_workers, max_skip_rate=max_skip_rate, skip_check_after=skip_check_after,
                         shuffle_window=shuffle_window, cache_limit=cache_limit, fetch_timeout=fetch_timeout,
                         fetch_retries=fetch_retries)
        if image_size % vq_patch:
            raise UserError(f"data.image_size {image_size} must be a multiple of data.vq_patch {vq_patch}")
        if data_dir is not None and num_classes is None:
            raise UserError("data.num_classes is required with data_dir (real images): the largest label + 1")
        self.image_size, self.vq_patch, self.codebook_size_wanted = image_size, vq_patch, codebook_size
        if vq_factory is not None:  # accepted as null only, so configs of earlier runs still load
            raise UserError(f"data.vq_factory={vq_factory!r}: framelab no longer imports a callable "
                            "named by a config; give a PatchVQ .npz as vq_path, or subclass "
                            "ImageTokenDataModule to build another tokenizer")
        self.vq_path = vq_path
        self.fit_samples, self.fit_iters, self.batch_size = fit_samples, fit_iters, batch_size
        self.num_classes = NUM_CLASSES if num_classes is None else int(num_classes)
        self.image_tokenizer = None
        self._grid_sets: dict = {}

    def _vq_file(self):
        folders = self._folders("train")
        if not folders:
            raise UserError("fitting the image tokenizer needs training data (data.samples.train > 0)")
        name = f"vq-{self.codebook_size_wanted}-p{self.vq_patch}-{self.image_size}-s{self.seed}.npz"
        if self.data_dir is None:
            return folders[0] / name
        digest = hashlib.sha1("|".join(getattr(f, "url", None) or str(f.resolve())
                                       for f in folders).encode()).hexdigest()[:10]
        return self.cache_dir / f"vq-{digest}-{name[3:]}"

    def _fit(self, path) -> None:
        shards = self.shard_set("train")
        reader = ImageTransform(None, self.image_size)
        images = []
        for i in range(min(self.fit_samples, len(shards))):
            try:
                images.append(reader.image(shards.read(i)))
            except SampleError:
                continue
        if not images:
            raise UserError(f"no readable training image to fit the image tokenizer in {shards.shard_name(0)}")
        vq = PatchVQ.fit(np.concatenate(images), self.codebook_size_wanted, self.vq_patch, self.fit_iters, self.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        vq.save(path)

    def prepare_data(self) -> None:
        super().prepare_data()
        if self.vq_path is None and not self._vq_file().is_file():
            self._fit(self._vq_file())
        for split in ["train", "val"] + self.test_splits:
            self._grids(split)

    def _grids(self, split: str):
        """The split's token grids (computed once; token_grids.py), or None: no such split, remote
        shards, or an image tokenizer that is not a PatchVQ file."""
        if split in self._grid_sets:
            return self._grid_sets[split]
        shards = self.shard_set(split)
        if shards is None or shards.remote:
            return None
        self.setup()
        vq_file = Path(self.vq_path) if self.vq_path is not None else self._vq_file()
        if not isinstance(self.image_tokenizer, PatchVQ) or not vq_file.is_file():
            return None
        grids = self._grid_sets[split] = ensure_grids(self.cache_dir, shards, self.image_tokenizer, vq_file,
                                                      self.image_size, ImageTransform(None, self.image_size).image)
        return grids

    def setup(self, stage: str | None = None) -> None:
        if self.image_tokenizer is None:
            if self.vq_path is not None:
                self.image_tokenizer = load_image_tokenizer(self.vq_path)
            else:
                if not self._vq_file().is_file():
                    self._fit(self._vq_file())
                self.image_tokenizer = PatchVQ.load(self._vq_file())

    @property
    def codebook_size(self) -> int:
        self.setup()
        return self.image_tokenizer.codebook_size

    @property
    def grid(self) -> tuple[int, int]:
        self.setup()
        side = self.image_size // self.image_tokenizer.patch
        return side, side

    def decode(self, tokens) -> torch.Tensor:
        """Token grids (B, h*w) -> images float32 (B, 3, H, W) in [0, 1]."""
        return self.image_tokenizer.decode(tokens, self.grid)

    def _transform(self, split: str) -> ImageTransform:
        self.setup()
        return ImageTransform(self.image_tokenizer, self.image_size, self._grids(split))

    def _plan(self, train: bool):
        return batch_size_plan(self.batch_size)

    def _collate(self):
        return collate_image_tokens
