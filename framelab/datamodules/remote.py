"""Where a shard set's shards are: the entries of `data.data_dir` resolved to local paths and to
remote shards with their index.

An entry is
- a local folder or .tar file (read in place);
- the URL of a shard set's `manifest.json` (`https://host/set/manifest.json`,
  `pipe:aws s3 cp s3://bucket/set/manifest.json -`): the set's shards are at the manifest's names
  put in place of `manifest.json` in that URL;
- the `{name}` template a set was packed to (`data pack --out`), which means its manifest.json;
- a shard URL, or a brace pattern of them (`https://host/train-{000000..000099}.tar`, expanded by
  webdataset; several entries may also be joined with `::`): any scheme webdataset opens.

Exact resume needs every shard's index (sample keys, member offsets and sizes) before reading
starts. A shard URL's index comes from the manifest.json beside it (its file name replaced by
`manifest.json` in the URL) when there is one, else from reading the shard once through the
shard cache; scanned indexes are kept in `<cache>/index/`. Names from a remote manifest are put
into URLs (for pipe:, into a shell command), so they must be plain relative paths (letters,
digits, `._-/`). Anything unusable is a one-line UserError naming the URL.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from webdataset.shardlists import expand_urls

from framelab.datamodules.fetch import FetchError, check_url, read_url, scheme
from framelab.datamodules.reader import SampleError
from framelab.datamodules.shard_cache import CacheConfig, ShardCache
from framelab.datamodules.shards import MANIFEST, manifest_problem, scan_tar
from framelab.errors import UserError

log = logging.getLogger(__name__)
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
_FILE = re.compile(r"[^/\s'\"]+\.tar\b|manifest\.json")


@dataclass(frozen=True)
class RemoteShard:
    url: str
    samples: list          # [{"key", "members", "crc32"?}] as in a manifest
    bytes: int | None


def is_remote(entry) -> bool:
    return isinstance(entry, str) and scheme(entry) != ""


def expand(spec) -> list[str]:
    """Every entry of a data_dir value (a string or a list of them), brace patterns and `::`
    lists expanded by webdataset; `{name}` (a `data pack --out` template) is the manifest."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: list[str] = []
    for item in items:
        text = str(item).replace("{name}", MANIFEST)
        out += expand_urls(text) if ("{" in text or "::" in text) else [text]
    return out


def is_manifest_url(url: str) -> bool:
    return _FILE.findall(url)[-1:] == [MANIFEST]


def sibling(url: str, name: str) -> str:
    """The URL of `name` beside the file `url` names (its last file name replaced)."""
    found = list(_FILE.finditer(url))
    if not found:
        raise UserError(f"data.data_dir {url!r}: no shard file name (NAME.tar) or manifest.json in it")
    m = found[-1]
    return url[:m.start()] + name + url[m.end():]


def resolve(entries: list[str], cache: CacheConfig, timeout: float) -> list:
    """Local entries as Paths, remote ones as RemoteShards (manifests expanded), in order."""
    out: list = []
    manifests: dict[str, dict | None] = {}
    for entry in entries:
        if not is_remote(entry):
            out.append(Path(entry))
            continue
        check_url(entry)
        if is_manifest_url(entry):
            manifest = manifests[entry] = remote_manifest(entry, timeout)
            out += [RemoteShard(sibling(entry, s["name"]), s["samples"], s.get("bytes"))
                    for s in manifest["shards"]]
        else:
            out.append(_shard(entry, manifests, cache, timeout))
    return out


def remote_manifest(url: str, timeout: float, quiet: bool = False) -> dict | None:
    """The manifest at `url`, checked as a local one is, with safe shard names (quiet: None when
    it cannot be fetched)."""
    try:
        data = read_url(url, timeout)
    except FetchError as e:
        if quiet:
            return None
        raise UserError(f"data.data_dir: cannot read {e}; check the URL (and that the command works "
                        "in a shell), or give the shards' URLs") from None
    where = f"data.data_dir manifest {url}"
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{where} is not valid JSON ({e}); expected a manifest.json written by "
                        "`framelab data synth` or `framelab data pack`") from None
    problem = manifest_problem(manifest)
    if problem is None:
        bad = [s["name"] for s in manifest["shards"] if not SAFE_NAME.fullmatch(s["name"])]
        problem = f"shard name {bad[0]!r} has characters other than letters, digits and ._-/" if bad else None
    if problem:
        raise UserError(f"{where}: {problem}; write the set again with `framelab data pack`")
    return manifest


def _shard(url: str, manifests: dict, cache: CacheConfig, timeout: float) -> RemoteShard:
    """A shard URL with its index: from the manifest beside it, else scanned (and kept)."""
    name = _FILE.findall(url)[-1] if _FILE.findall(url) else None
    beside = sibling(url, MANIFEST) if name else None
    if beside is not None and beside not in manifests:
        manifests[beside] = remote_manifest(beside, min(timeout, 60.0), quiet=True)
    manifest = manifests.get(beside)
    for s in (manifest or {}).get("shards", []):
        if s["name"] == name:
            return RemoteShard(url, s["samples"], s.get("bytes"))
    return scanned(url, cache)


def scanned(url: str, cfg: CacheConfig) -> RemoteShard:
    """A shard's index from reading it once (kept in `<cache>/index/` for later runs)."""
    kept = cfg.folder / "index" / f"{hashlib.sha1(url.encode()).hexdigest()}.json"
    try:
        entry = json.loads(kept.read_text())
        return RemoteShard(url, entry["samples"], entry["bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    cache = ShardCache(cfg)
    try:
        f = cache.acquire(url, None, wait=True)
    except SampleError as e:
        raise UserError(f"data.data_dir: cannot index shard {url}: {e}; check the URL (and that the "
                        "command works in a shell), or put a manifest.json beside the shards") from None
    try:
        samples, error = scan_tar(cache.path(url))
        size = os.fstat(f.fileno()).st_size
    finally:
        cache.release(f, url)
    if error:
        log.warning("shard %s is damaged (%s); its samples before the damage are used", url, error)
    kept.parent.mkdir(parents=True, exist_ok=True)
    tmp = kept.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"url": url, "bytes": size, "samples": samples}))
    os.replace(tmp, kept)
    return RemoteShard(url, samples, size)
