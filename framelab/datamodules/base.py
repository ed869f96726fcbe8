"""What both streaming datamodules share: where each split's shards come from (the embedded
world's cache, real shard folders, or remote shards streamed through the shard cache: remote.py,
shard_cache.py), lock-step loaders, the resumable data position and skip logging.

Data position: `state_dict()` holds the training stream's epoch and the number of samples consumed
in it by all ranks together (plus counters). Lightning stores it in checkpoints and gives it back
through `load_state_dict()`; the next training loader continues from there with the same or
another number of workers and ranks (see stream.py and lockstep.py for why that is exact).
The position is taken from each training batch as Lightning hands it over
(`on_before_batch_transfer`); if the LightningModule overrides that hook too, Lightning calls the
datamodule's and warns. Plain loops call `dm.on_before_batch_transfer(batch, 0)` themselves.
"""
from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf

from framelab.datamodules.lockstep import LockstepLoader, StreamState
from framelab.datamodules.order import check_window, shuffle_mode
from framelab.datamodules.reader import ShardSet
from framelab.datamodules.remote import expand, is_remote, resolve
from framelab.datamodules.shard_cache import CacheConfig, parse_bytes
from framelab.datamodules.stream import SampleStream
from framelab.datamodules.synth import ensure_world_shards, resolve_cache_dir
from framelab.errors import UserError
from framelab.world.scene import SPLITS
from framelab.world.tasks import TASKS as WORLD_TASKS

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers fork after the tokenizer is built


def plain(value):
    """Hydra hands over DictConfig/ListConfig; keep plain dicts and lists (hashable as JSON)."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


class StreamingDataModule(L.LightningDataModule):
    """Base class; subclasses define `_transform(split)`, `_plan(train)` and `_collate()`."""

    def __init__(self, *, tasks, task_params, samples, shards, data_dir, cache_dir, test_splits,
                 frames_format, world_seed, seed, shuffle, num_workers, max_skip_rate, skip_check_after,
                 weights=None, shuffle_window=4, cache_limit="50GB", fetch_timeout=600.0, fetch_retries=3):
        super().__init__()
        tasks, task_params, samples, data_dir, test_splits = (
            plain(x) for x in (tasks, task_params, samples, data_dir, test_splits))
        self.tasks = [tasks] if isinstance(tasks, str) else list(tasks or [])
        self.task_params = dict(task_params or {})
        self.samples = samples
        self.weights = {k: float(v) for k, v in (plain(weights) or {}).items()}
        # like task_params, a world task's weight may stand while the task is not mixed in (an
        # experiment's weights survive `data.tasks=[...]`); any other unknown key is a typo
        known = set(self.tasks) | (set(WORLD_TASKS) if data_dir is None else set())
        bad = {k: v for k, v in self.weights.items() if k not in known or v < 0}
        if bad:
            raise UserError(f"data.weights {bad}: each key must be one of data.tasks {self.tasks} "
                            "(or another world task, unused) and each weight >= 0 (a task's share "
                            "of the training samples, 1 by default)")
        self.shards = shards
        self.data_dir = data_dir
        self.cache_dir = resolve_cache_dir(cache_dir)
        self.test_splits = [test_splits] if isinstance(test_splits, str) else list(test_splits)
        self.frames_format = frames_format
        self.world_seed = world_seed
        self.seed = seed
        self.shuffle = shuffle
        shuffle_mode(shuffle, False)                    # a bad value fails here, not in a worker
        self.shuffle_window = check_window(shuffle_window)
        if isinstance(fetch_timeout, bool) or not isinstance(fetch_timeout, (int, float)) or fetch_timeout <= 0:
            raise UserError(f"data.fetch_timeout={fetch_timeout!r}: expected seconds > 0 (one download try)")
        if isinstance(fetch_retries, bool) or not isinstance(fetch_retries, int) or fetch_retries < 0:
            raise UserError(f"data.fetch_retries={fetch_retries!r}: expected an integer >= 0")
        self.cache_config = CacheConfig(self.cache_dir / "shards", parse_bytes(cache_limit), float(fetch_timeout),
                                        fetch_retries, ahead=self.shuffle_window)
        self.num_workers = num_workers
        self.max_skip_rate = max_skip_rate
        self.skip_check_after = skip_check_after
        self.state = StreamState()
        self._sets: dict[str, ShardSet | None] = {}
        self._logged_skips = 0
        if data_dir is None and not self.tasks:
            raise UserError("data.data_dir is not set and data.tasks is empty: give data.data_dir=FOLDER "
                            "(shards written by `framelab data pack`), or world tasks, e.g. "
                            "data.tasks=[describe]")
        unknown = [s for s in self.test_splits if s not in SPLITS]
        if unknown:
            raise UserError(f"test_splits {unknown} unknown; choose from {list(SPLITS)}")

    # ----------------------------------------------------------------- where the shards are
    def _split_samples(self, split: str, task: str) -> int:
        """Samples of `task` in `split`: `samples` per split (an int: that many train samples and
        an eighth for each other split), times the task's mixing weight in the train split (the
        stream draws uniformly from all of a split's samples, so counts are the mixture)."""
        if isinstance(self.samples, int):
            n = self.samples if split == "train" else max(1, self.samples // 8)
        else:
            n = int(self.samples.get(split, 0))
        return round(n * self.weights.get(task, 1.0)) if split == "train" else n

    def _folders(self, split: str) -> list:
        """Shard folders (and remote shards) of a split ([] when the split has no data)."""
        if self.data_dir is not None:
            return self._real_folders(split)
        counts = {task: self._split_samples(split, task) for task in self.tasks}
        return [ensure_world_shards(self.cache_dir, task, split, n, self.shards, self.task_params.get(task),
                                    self.frames_format, self.world_seed, progress=True)
                for task, n in counts.items() if n > 0]

    def _real_folders(self, split: str) -> list:
        """A split's local shard folders (Paths) and remote shards (remote.RemoteShard)."""
        spec = self.data_dir
        if hasattr(spec, "get"):                               # {train: ..., val: ...}
            entries = spec.get(split)
            return [] if entries is None else resolve(expand(entries), self.cache_config, self.cache_config.timeout)
        if isinstance(spec, (str, os.PathLike)) and not self._is_pattern(str(spec)):
            root = Path(spec)
            if not root.exists():
                raise UserError(f"data_dir {root} does not exist; give a folder of shards "
                                "(from `framelab data pack`) or one with train/ val/ test/ sub-folders")
            if (root / split).is_dir():
                return [root / split]
            return [root] if split == "train" else []
        if split != "train":                                   # URLs or a list: the training set
            return []
        return resolve(expand(spec), self.cache_config, self.cache_config.timeout)

    @staticmethod
    def _is_pattern(text: str) -> bool:
        return is_remote(text) or "{" in text or "::" in text

    def shard_set(self, split: str) -> ShardSet | None:
        if split not in self._sets:
            folders = self._folders(split)
            self._sets[split] = ShardSet(folders, self.cache_config) if folders else None
        return self._sets[split]

    def prepare_data(self) -> None:
        """Generate the embedded world's shards (first use only), or index remote shards (kept in
        the cache for the other processes); called on one process per node."""
        for split in ["train", "val"] + self.test_splits:
            self._folders(split)

    # ----------------------------------------------------------------- loaders
    def _loader(self, split: str, train: bool):
        shards = self.shard_set(split)
        if shards is None:
            return None
        if train and self.state.num_samples not in (None, len(shards)):
            raise UserError(f"the data position in the checkpoint was saved for {self.state.num_samples} "
                            f"training samples but the training set now has {len(shards)}; resume with "
                            "the same data, or start a new run")
        if train:
            self.state.num_samples = len(shards)
        mode = shuffle_mode(self.shuffle if train else False, shards.remote)
        self._check_cache(shards, mode)
        stream = SampleStream(shards, self._transform(split), self.seed, mode, self.shuffle_window)
        state = self.state if train else StreamState()
        return LockstepLoader(stream, self._plan(train), self._collate(), state,
                              num_workers=self.num_workers, track_position=train,
                              max_skip_rate=self.max_skip_rate, skip_check_after=self.skip_check_after,
                              budget=self._batch_budget() if train else None)

    def _check_cache(self, shards: ShardSet, mode: str) -> None:
        """The cache must hold what readers need at once: all shards for a full shuffle, else two
        blocks (the current and the next one) of the largest shards, and with several DataLoader
        workers a third: a worker may still read the previous block while another, a few batches
        ahead, starts the next one (with less room they wait on each other until a timeout)."""
        if not shards.remote:
            return
        sizes = sorted((b or 0 for b in shards.sizes.values()), reverse=True)
        block = {"full": len(sizes), "blocks": self.shuffle_window, "none": 1}[mode]
        blocks = 3 if self.num_workers > 1 else 2
        need = sum(sizes) if mode == "full" else blocks * sum(sizes[:block])
        limit = self.cache_config.limit
        if need > limit:
            fix = ("use data.shuffle=blocks" if mode == "full" else "lower data.shuffle_window"
                   if block > 1 else "use smaller shards")
            raise UserError(f"data.cache_limit={limit} bytes cannot hold what shuffle={mode} reads at "
                            f"once ({need} bytes of remote shards); raise data.cache_limit or {fix}")

    def _batch_budget(self):
        """None, or `budget(b) -> key` setting training batch b's budget (see lockstep.py)."""
        return None

    def train_dataloader(self):
        loader = self._loader("train", train=True)
        if loader is None:
            raise UserError("no training data: set data.samples.train > 0 or give data_dir with shards")
        return loader

    def val_dataloader(self):
        loader = self._loader("val", train=False)
        return [] if loader is None else loader

    def test_dataloader(self):
        loaders = [x for x in (self._loader(s, train=False) for s in self.test_splits) if x is not None]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self):
        return self.test_dataloader()

    # ----------------------------------------------------------------- position and skips
    def state_dict(self) -> dict:
        st = self.state
        return {"epoch": st.epoch, "consumed": st.consumed, "num_samples": st.num_samples,
                "seed": self.seed, "skipped": st.skipped, "seen": st.seen, "batches": st.batches}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise UserError(f"checkpoint data seed {state['seed']} differs from data.seed {self.seed}; "
                            "resume with the same seed for an exact data order")
        self.state.epoch, self.state.consumed = int(state["epoch"]), int(state["consumed"])
        self.state.batches = int(state.get("batches", 0))
        self.state.num_samples = state.get("num_samples")

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, samples consumed in it by all ranks) after the last batch handed over."""
        return self.state.epoch, self.state.consumed

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict):
            pos = batch.pop("_position", None)
            if pos is not None:
                self.state.epoch, self.state.consumed, self.state.batches = pos
                self._log_skips()
        return batch

    def _log_skips(self) -> None:
        trainer = getattr(self, "trainer", None)
        if self.state.skipped == self._logged_skips or trainer is None or trainer.logger is None:
            return
        self._logged_skips = self.state.skipped
        trainer.logger.log_metrics({"data/skipped": float(self.state.skipped)}, step=trainer.global_step)
