"""Errors a user can cause (config, data, checkpoint). The CLI prints them as one line, no traceback."""


class UserError(Exception):
    """Something the user can fix: the message names what is wrong, where, and what would be right."""


class DataStop(UserError):
    """Training stops because of its data (too many unreadable samples). Raised on every rank at
    the same batch; the steps trained so far are saved (PreemptionCallback.on_exception)."""


def check_writable(folder, where: str) -> None:
    """A UserError line unless files can be created in `folder`, or, when it does not exist yet,
    in its nearest existing parent (so it can be made). Tried, not guessed from permission bits,
    which say nothing for root or for special file systems."""
    import tempfile
    from pathlib import Path

    folder = Path(folder).absolute()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is a file")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UserError(f"{where}: cannot write in {folder} ({reason} at {probe}); give a folder "
                        "you can write to") from None
