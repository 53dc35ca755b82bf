"""One writer of the event store per API process: ingests that arrive together share one connection,
opened before and closed after them, so the embedded store's file is free for other processes (a
worker reading a stream, an export) between groups. Four clients posting 20 times a second each opened
a connection of their own, which overlapped so that a stream's worker never got the file."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import Storage
from ..ingest import ingest_file
from ..sources import EventStore


class Unopened(Storage):
    """The store could not be opened for writing (another process holds it): nothing was tried."""


@dataclass
class Ingest:
    spool: Path
    project: str
    done: threading.Event = field(default_factory=threading.Event)
    ingested: int = 0
    error: BaseException | None = None


class GroupWriter:
    """`ingest` stores a spooled body in the store `open_store` opens for writing. The caller that gets
    the writer's turn stores every body waiting by then, each in its own statement with its own result
    or error; the others find theirs done when their turn comes."""

    def __init__(self, open_store: Callable[[], EventStore]) -> None:
        self.open_store = open_store
        self.turn = threading.Lock()
        self.waiting: list[Ingest] = []
        self.queue = threading.Lock()

    def ingest(self, spool: Path, project: str) -> int:
        """New events stored from `spool` into `project`; raises what storing them raised, or Unopened
        when the store could not be opened."""
        mine = Ingest(spool, project)
        with self.queue:
            self.waiting.append(mine)
        with self.turn:
            if not mine.done.is_set():
                with self.queue:
                    group, self.waiting = self.waiting, []
                self.store(group)
        if mine.error is not None:
            raise mine.error
        return mine.ingested

    def store(self, group: list[Ingest]) -> None:
        try:
            store = self.open_store()
        except Storage as exc:
            for item in group:
                item.error = Unopened(str(exc))
                item.done.set()
            return
        except BaseException as exc:
            for item in group:
                item.error = exc
                item.done.set()
            return
        try:
            for item in group:
                try:
                    item.ingested = ingest_file(store, item.spool, item.project, name="body")
                except BaseException as exc:  # this body's own error, raised in its request
                    item.error = exc
                finally:
                    item.done.set()
        finally:
            store.close()
