"""The inbox: request bodies spooled to files for DuckDB to read, and what killed ingests left there.

Each spool is locked (`flock`) by the ingest using it, for as long as it does; the kernel releases the
lock when that process ends, however it ends (kill -9, out of memory). So a spool nobody holds belongs
to no live ingest and can go, at once and on any machine sharing the data dir: neither a pid (reused,
and meaningless to another machine) nor an age (a guess at the longest ingest) decides it. A spool
younger than GRACE_SECONDS is kept all the same: it may not be locked yet.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import os_error

GRACE_SECONDS = 60.0
"""Spools younger than this are never removed: the moment between creating one and locking it."""


def inbox_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "inbox"


@contextmanager
def spooled(data_dir: Path, body: bytes, suffix: str) -> Iterator[Path]:
    """`body` in a new inbox file, locked while the caller reads it and removed after."""
    inbox = inbox_dir(data_dir)
    inbox.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=inbox, prefix="ingest-", suffix=suffix, buffering=0) as spool:
        fcntl.flock(spool.fileno(), fcntl.LOCK_EX)  # released when closed, or when this process dies
        try:  # unbuffered: nothing is left to flush (and fail again) when it closes
            rest = memoryview(body)
            while rest:
                rest = rest[spool.write(rest):]
        except OSError as exc:  # a full disk: Storage, as for any store that cannot take the events now
            raise os_error(exc, inbox) from exc
        yield Path(spool.name)


def clean_inbox(data_dir: Path) -> int:
    """Remove the spools no live ingest holds (left by killed ones); returns how many. Best effort:
    a file that cannot be opened or removed is left for the next start, which reports nothing."""
    inbox = inbox_dir(data_dir)
    removed = 0
    try:
        paths = [p for p in inbox.iterdir() if p.name.startswith("ingest-") or p.name.startswith("tmp")]
    except OSError:  # no inbox yet, or one this process cannot read
        return 0
    for path in paths:
        try:
            if time.time() - path.lstat().st_mtime < GRACE_SECONDS:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink()
            removed += 1
        except OSError:  # held by a live ingest (BlockingIOError), or not ours to remove
            pass
        finally:
            os.close(fd)
    return removed
