"""A bounded folder of downloaded shards, shared by the processes of one node, and each process's
reader of it.

Layout: `<paths.cache_dir>/shards/<sha1 of the URL>.tar`, complete copies only (a download is
written to a private `.part` file and renamed). At most `limit` bytes of copies are on disk:
before a download, copies nobody holds are deleted, least recently used first, until the new one
fits. A process holds a copy while it reads it (an open file with a shared `flock`), so a copy is
never deleted under a reader; a copy is deleted as soon as its last holder lets go of it
(eviction after use). A download gets `timeout` seconds a try and `retries` more tries after
back-offs of 1, 2, 4, ... s (at most 30); when all fail, reading the shard raises
`SampleError("fetch_failed")`, which the stream counts like a corrupt shard (`max_skip_rate`).
No step waits without a deadline.

`ShardReader` is one process's side: told the order in which it will read shards (`plan`), it
downloads the next `ahead` of them on a background thread while the current ones are read
(prefetch overlapped with training), and lets go of each shard after its last planned read.
The folder should be on a node-local disk (flock).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from framelab.datamodules.fetch import FetchError, fetch
from framelab.datamodules.reader import SampleError
from framelab.errors import UserError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value, what: str = "data.cache_limit") -> int:
    """A byte count from an integer, a float (2e10) or a string such as '50GB' or '1.5TiB'."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]i?b|b)?\s*", str(value).lower())
    if isinstance(value, str) and m and float(m.group(1)) > 0:
        return int(float(m.group(1)) * _UNITS[m.group(2) or ""])
    raise UserError(f"{what}={value!r}: expected a size in bytes > 0, e.g. 50000000000, 5e10 or '50GB'")


@dataclass(frozen=True)
class CacheConfig:
    folder: Path
    limit: int                  # bytes of shard copies on disk, at most
    timeout: float = 600.0      # seconds one download try may take
    retries: int = 3            # further tries after a failed one
    backoff: float = 1.0        # seconds before the first retry (doubling)
    ahead: int = 4              # shards a reader downloads ahead of the one it reads


class ShardCache:
    """The shared folder: `acquire` a held copy of a URL, `release` it."""

    def __init__(self, cfg: CacheConfig):
        self.cfg = cfg
        cfg.folder.mkdir(parents=True, exist_ok=True)

    def path(self, url: str) -> Path:
        return self.cfg.folder / f"{hashlib.sha1(url.encode()).hexdigest()}.tar"

    def acquire(self, url: str, size: int | None, wait: bool = True):
        """An open file of the URL's copy, held (shared flock), downloading it when missing. With
        wait=False (prefetch) returns None rather than wait for room. Raises SampleError
        (fetch_failed / cache_full) when the copy cannot be had."""
        path, last = self.path(url), ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(min(self.cfg.backoff * 2 ** (attempt - 1), 30.0))
            held = self._open_held(path)
            if held is not None:
                return held
            try:
                with self._download_lock(path):
                    held = self._open_held(path)
                    if held is not None:
                        return held
                    if not self._make_room(size or 0, wait):
                        return None
                    self._download(url, path, size)
                    held = self._open_held(path)
                    if held is not None:
                        return held
                    last = "the copy was evicted right after its download"
            except FetchError as e:
                last = str(e)
        raise SampleError("fetch_failed", f"{last} (tried {self.cfg.retries + 1} times)")

    def release(self, f, url: str) -> bool:
        """Let go of a held copy; delete it when no other process holds it (True: deleted or gone)."""
        f.close()
        return self.evict(url)

    def evict(self, url: str) -> bool:
        return self._evict(self.path(url)) or not self.path(url).exists()

    # ----------------------------------------------------------------- the folder
    def _open_held(self, path: Path):
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return None
        deadline = time.monotonic() + 30
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:          # an evictor holds it for an instant
                if time.monotonic() > deadline:
                    f.close()
                    return None
                time.sleep(0.01)
        if os.fstat(f.fileno()).st_nlink == 0:  # evicted between open and lock
            f.close()
            return None
        os.utime(path)                          # least recently used goes first
        return f

    def _download_lock(self, path: Path):
        return _Lock(path.with_suffix(".lock"), self.cfg.timeout + 10)

    def _download(self, url: str, path: Path, size: int | None) -> None:
        part = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            with open(part, "wb") as out:
                n = fetch(url, out, self.cfg.timeout)
            if size is not None and n != size:
                raise FetchError(f"{url}: {n} bytes arrived, the shard index says {size}")
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)

    def _used(self) -> int:
        total = 0
        for p in self.cfg.folder.iterdir():
            if p.suffix in (".tar", ".part"):
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                if p.suffix == ".part" and time.time() - st.st_mtime > 2 * self.cfg.timeout + 60:
                    p.unlink(missing_ok=True)   # left by a process that died mid-download
                    continue
                total += st.st_size
        return total

    def _make_room(self, size: int, wait: bool) -> bool:
        deadline = time.monotonic() + (self.cfg.timeout if wait else 0)
        while True:
            used = self._used()
            if used + size <= self.cfg.limit:
                return True
            victims = sorted(self.cfg.folder.glob("*.tar"), key=_mtime)
            for victim in victims:
                if used + size <= self.cfg.limit:
                    return True
                gone = _size(victim)
                if self._evict(victim):
                    used -= gone
            if used + size <= self.cfg.limit:
                return True
            if time.monotonic() >= deadline:
                if not wait:
                    return False
                raise SampleError("cache_full", f"{size} more bytes do not fit in data.cache_limit="
                                  f"{self.cfg.limit} ({used} bytes held by readers); raise "
                                  "data.cache_limit or lower data.shuffle_window")
            time.sleep(0.2)

    def _evict(self, path: Path) -> bool:
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:                 # someone is reading it
            f.close()
            return False
        path.unlink(missing_ok=True)
        path.with_suffix(".lock").unlink(missing_ok=True)
        f.close()
        return True


class _Lock:
    """An exclusive flock on a file, waited for at most `timeout` seconds."""

    def __init__(self, path: Path, timeout: float):
        self.path, self.timeout, self.f = path, timeout, None

    def __enter__(self):
        self.f = open(self.path, "a+b")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.f.close()
                    raise FetchError(f"{self.path.with_suffix('.tar')}: another process has been "
                                     f"downloading it for over {self.timeout:g} s") from None
                time.sleep(0.05)

    def __exit__(self, *exc):
        self.f.close()


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


class ShardReader:
    """One process's held copies of the remote shards `urls` (index -> URL) of sizes `sizes`."""

    def __init__(self, cfg: CacheConfig, urls: dict[int, str], sizes: dict[int, int | None]):
        self.cache, self.urls, self.sizes, self.ahead = ShardCache(cfg), urls, sizes, cfg.ahead
        self.held: dict[int, tuple] = {}              # shard -> (file, size)
        self.unevicted: set[str] = set()              # let go of, but held elsewhere at that time
        self.loose: int | None = None                 # last shard read outside the plan
        self.failed: dict[int, SampleError] = {}
        self.pending: dict[int, object] = {}          # shard -> Future of a prefetch
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="framelab-prefetch")
        self.last: dict[int, int] = {}
        self.firsts: list[tuple[int, int]] = []       # (first read, shard) in plan order
        self.k = self.next_first = 0

    def plan(self, shards: list[int]) -> None:
        """This process will read these shards in this order (one entry per sample)."""
        self.last = {s: i for i, s in enumerate(shards)}
        seen: set = set()
        self.firsts = [(i, s) for i, s in enumerate(shards) if not (s in seen or seen.add(s))]
        self.k = self.next_first = 0
        self._top_up()

    def advance(self, k: int) -> None:
        """About to read planned entry k: let go of shards read for the last time, prefetch."""
        self.k = k
        for s in [s for s in self.held if self.last.get(s, -1) < k]:
            self._release(s)
        while self.next_first < len(self.firsts) and self.firsts[self.next_first][0] < k:
            self.next_first += 1
        self._top_up()

    def _top_up(self) -> None:
        # a copy still held when let go of (e.g. by a download process forked at that instant,
        # which shares the open files until it starts) is deleted at a later step
        self.unevicted = {url for url in self.unevicted if not self.cache.evict(url)}
        for s, fut in list(self.pending.items()):
            if fut.done():
                self.pending.pop(s)
                self._settle(s, fut)
        for _, s in self.firsts[self.next_first:self.next_first + self.ahead]:
            if s in self.urls and s not in self.held and s not in self.pending and s not in self.failed:
                self.pending[s] = self.pool.submit(self.cache.acquire, self.urls[s], self.sizes.get(s), False)

    def _settle(self, s: int, fut) -> None:
        try:
            f = fut.result()
        except SampleError as e:
            self.failed[s] = e
            return
        if f is not None:
            self.held[s] = (f, os.fstat(f.fileno()).st_size)

    def file(self, s: int) -> tuple:
        """(open file, size) of shard s's held copy; SampleError when it cannot be had."""
        if s in self.failed:
            raise self.failed[s]
        if s not in self.held:
            fut = self.pending.pop(s, None)
            if fut is not None:
                self._settle(s, fut)            # bounded: acquire itself has deadlines
                if s in self.failed:
                    raise self.failed[s]
            if s not in self.held:
                try:
                    f = self.cache.acquire(self.urls[s], self.sizes.get(s), True)
                except SampleError as e:
                    self.failed[s] = e
                    raise
                self.held[s] = (f, os.fstat(f.fileno()).st_size)
        return self.held[s]

    def done_reading(self, s: int) -> None:
        """After a read: a shard with no planned read left is let go of once a read outside the
        plan moves to another shard (reads outside a plan, e.g. fitting a tokenizer, go in order)."""
        if self.loose is not None and self.loose != s and self.loose in self.held:
            if self.last.get(self.loose, -1) < self.k:
                self._release(self.loose)
        self.loose = s if self.last.get(s, -1) < self.k else None

    def _release(self, s: int) -> None:
        f, _ = self.held.pop(s)
        if not self.cache.release(f, self.urls[s]):
            self.unevicted.add(self.urls[s])

    def close(self) -> None:
        """Let go of every copy. A download still running is waited for (it has its deadline), so
        no thread is left behind: a process forked later (a DataLoader worker, a rank) must not
        inherit a half-done download's locks and files."""
        for s, fut in self.pending.items():
            fut.add_done_callback(lambda fut, url=self.urls[s]: self._drop(fut, url))
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending = {}
        for s in list(self.held):
            self._release(s)
        for _ in range(50):                   # a forked download process lets go within moments
            self.unevicted = {url for url in self.unevicted if not self.cache.evict(url)}
            if not self.unevicted:
                break
            time.sleep(0.02)

    def _drop(self, fut, url: str) -> None:
        if not fut.cancelled() and fut.exception() is None and fut.result() is not None:
            self.cache.release(fut.result(), url)
