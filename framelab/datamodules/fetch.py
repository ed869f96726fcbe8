"""Reading and writing the bytes at a URL through webdataset's openers (`webdataset.gopen`), with
a deadline.

Any source webdataset opens works: a local path or file:, http(s):// (curl), pipe:COMMAND (the
command's standard output; for writing, its standard input), gs://, hf://, ... A transfer that has
not finished after `timeout` seconds is stopped (a pipe's or curl's process is killed) and is a
`FetchError`, so no reader ever waits without end. Every failure is one line: the URL and what
went wrong.
"""
from __future__ import annotations

import threading
from urllib.parse import urlparse

from webdataset.gopen import Pipe, gopen, gopen_schemes, set_options

from framelab.errors import UserError

CHUNK = 1 << 20
# what curl's exit status means (http(s):// is opened with curl)
CURL = {6: "host not found", 7: "connection refused", 22: "the server answered with an HTTP error "
        "(e.g. 404: no such file)", 28: "timed out", 35: "TLS handshake failed", 56: "connection reset"}


class FetchError(Exception):
    """A transfer failed; the message names the URL."""


def scheme(url: str) -> str:
    """'' for local paths (a Windows drive letter is a path too), else the URL scheme."""
    s = urlparse(url).scheme
    return "" if len(s) < 2 or s == "file" else s


def check_url(url: str, what: str = "data.data_dir") -> str:
    """`url` when webdataset can open its scheme, else a one-line UserError."""
    s = scheme(url)
    if s and s not in gopen_schemes:
        known = ", ".join(sorted(k + ":" for k in gopen_schemes if not k.startswith("_")))
        raise UserError(f"{what} {url!r}: webdataset cannot open the scheme {s!r}; use a local path "
                        f"or one of {known} (e.g. 'pipe:aws s3 cp s3://bucket/file.tar -')")
    return url


def _describe(error: BaseException, stream) -> str:
    if isinstance(stream, Pipe) and stream.status not in (None, 0):
        status = stream.status
        args = stream.args[0][0]
        tool = args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]
        meaning = CURL.get(status, "") if tool == "curl" else ""
        return f"{tool} exited with status {status}" + (f" ({meaning})" if meaning else "")
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _run(url: str, mode: str, work, timeout: float):
    """Open `url` in `mode`, run `work(stream)` and close it, all within `timeout` seconds."""
    box: dict = {}

    def run():
        try:
            stream = box["stream"] = gopen(url, mode)
            set_options(stream, timeout=timeout)        # a pipe's close waits at most this long
            box["result"] = work(stream)
            stream.close()
        except BaseException as e:  # noqa: BLE001 - reported below, with the URL
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True, name="framelab-fetch")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        stream = box.get("stream")
        if isinstance(stream, Pipe):
            stream.proc.kill()
        thread.join(5)
        raise FetchError(f"{url}: not finished within {timeout:g} s")
    if "error" in box:
        raise FetchError(f"{url}: {_describe(box['error'], box.get('stream'))}")
    return box["result"]


def fetch(url: str, out, timeout: float) -> int:
    """Copy the bytes at `url` into the binary file `out`; returns how many."""
    def copy(stream) -> int:
        n = 0
        while chunk := stream.read(CHUNK):
            out.write(chunk)
            n += len(chunk)
        return n
    return _run(url, "rb", copy, timeout)


def read_url(url: str, timeout: float) -> bytes:
    """All the bytes at `url`."""
    return _run(url, "rb", lambda stream: stream.read(), timeout)


def upload(path, url: str, timeout: float) -> None:
    """Write the local file `path` to `url` (e.g. pipe:aws s3 cp - s3://bucket/name)."""
    def copy(stream) -> None:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                stream.write(chunk)
    _run(url, "wb", copy, timeout)
