"""Files that hold events, keys or secrets are created readable by their owner only (0600), like
`secret.key`: the data dir may sit in a folder others can list, and the process umask is usually 022."""

from __future__ import annotations

import os
from pathlib import Path

MODE = 0o600


def create_private(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists (an existing file keeps the mode its owner gave it)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE))
    except FileExistsError:
        pass


def companion(store: Path, suffix: str) -> None:
    """Make sure `store`+`suffix` (a write-ahead log the engine creates and deletes as it goes) exists
    with `store`'s own mode, as SQLite does for its journals: the engine then writes into it as it is.
    Best effort: a file not ours to change is left alone."""
    try:
        mode = store.stat().st_mode & 0o777
        path = Path(f"{store}{suffix}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
        except FileExistsError:
            if path.stat().st_mode & 0o777 != mode:
                os.chmod(path, mode)
    except OSError:
        pass


def create_private_dir(path: Path) -> None:
    """Create the folder `path` with mode 0700 unless it exists (best effort: a store in a folder this
    process cannot write gets none)."""
    try:
        os.mkdir(path, 0o700)
    except OSError:
        pass
