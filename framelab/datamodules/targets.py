"""Where `framelab data pack` writes a shard set: a local folder, or a remote one named by a URL
template with `{name}` where each file's name goes, e.g. `pipe:aws s3 cp - s3://bucket/set/{name}`
(the command reads the file on its standard input) or any URL webdataset writes to.

A remote target's files are written to a private local folder first (a shard's index and
checksums are read back from it), uploaded through webdataset's openers as soon as they are
complete, and deleted, so at most one shard is on the local disk at a time. The manifest is
uploaded last: its presence marks a complete set, as in a local folder. The same template, with
`{name}` (or `manifest.json` in its place), is what `data.data_dir` and `data info` read.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from framelab.datamodules.fetch import FetchError, check_url, scheme, upload
from framelab.errors import UserError

UPLOAD_TIMEOUT = 3600.0   # seconds one file's upload may take


def is_remote_target(out: str) -> bool:
    return "{name}" in out or scheme(out) != ""


class Target:
    """A shard set's destination: `root` is the local folder files are written into; `publish`
    makes a finished file final (uploads and deletes it for a remote target)."""

    def __init__(self, out: str):
        self.out = str(out)
        self.remote = is_remote_target(self.out)
        if self.remote:
            if "{name}" not in self.out:
                raise UserError(f"--out {self.out!r}: a remote target needs {{name}} where each file's "
                                "name goes, e.g. 'pipe:aws s3 cp - s3://bucket/set/{name}'")
            check_url(self.out.replace("{name}", "x.tar"), "--out")
            self.root = Path(tempfile.mkdtemp(prefix="framelab-pack-"))
        else:
            self.root = Path(self.out)
            self.root.mkdir(parents=True, exist_ok=True)

    def where(self, name: str) -> str:
        """Where a file of the set ends up (a path or a URL)."""
        return self.out.replace("{name}", name) if self.remote else str(self.root / name)

    def publish(self, path: Path) -> None:
        if not self.remote:
            return
        url = self.where(str(path.relative_to(self.root)))
        try:
            upload(path, url, UPLOAD_TIMEOUT)
        except FetchError as e:
            raise UserError(f"--out: cannot write {e}; check that the command works in a shell "
                            "(it must read the file on its standard input)") from None
        path.unlink()

    def close(self) -> None:
        if self.remote:
            shutil.rmtree(self.root, ignore_errors=True)
