"""An idle worker's wait for work: it ends early once the job store may hold a new job, so an export starts
within about 50 ms of its creation, not at the worker's next look (every 0.5 s). SQLite: its
`data_version`, which moves whenever another connection commits (a few microseconds to read).
PostgreSQL: `LISTEN` on the channel each queued job or partition is notified on (`notify`). A wait
that learns nothing still ends at its timeout, so a missed wake only delays a job, as before."""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import TYPE_CHECKING, Protocol

import sqlalchemy as sa

if TYPE_CHECKING:
    import psycopg

CHANNEL = "analytics_export_jobs"
LOOK_SECONDS = 0.05
"""How often SQLite's `data_version` is read while waiting."""

log = logging.getLogger(__name__)


class Wakeup(Protocol):
    def wait(self, stop: threading.Event, seconds: float) -> None:
        """Return after `seconds`, or sooner once `stop` is set or the store may hold new work."""

    def close(self) -> None: ...


def notify(c: sa.Connection) -> None:
    """Wake the waiting workers when the transaction of `c` commits (PostgreSQL; SQLite's own
    `data_version` tells them)."""
    if c.dialect.name == "postgresql":
        c.exec_driver_sql(f"NOTIFY {CHANNEL}")


def wakeup_for(engine: sa.Engine) -> Wakeup:
    """The wait that fits `engine`'s database; a plain timed wait when it cannot be set up."""
    try:
        if engine.dialect.name == "sqlite" and engine.url.database:
            return SqliteWakeup(engine.url.database)
        if engine.dialect.name == "postgresql":
            return PostgresWakeup(engine.url)
    except Exception as exc:  # the store is down, say: workers look every poll as before
        log.warning("workers will look for jobs on a timer only (%s)", exc)
    return TimedWait()


class TimedWait:
    def wait(self, stop: threading.Event, seconds: float) -> None:
        stop.wait(seconds)

    def close(self) -> None:
        pass


class SqliteWakeup:
    """Reads `PRAGMA data_version` on a connection of its own until it moves (for the thread that made it)."""

    def __init__(self, path: str) -> None:
        self.con = sqlite3.connect(path)
        self.version = self.read()

    def read(self) -> int:
        return self.con.execute("PRAGMA data_version").fetchone()[0]

    def wait(self, stop: threading.Event, seconds: float) -> None:
        for _ in range(max(1, round(seconds / LOOK_SECONDS))):
            if stop.wait(LOOK_SECONDS):
                return
            try:
                version = self.read()
            except sqlite3.Error:  # locked or gone for a moment: the caller looks anyway
                return
            if version != self.version:
                self.version = version
                return

    def close(self) -> None:
        self.con.close()


class PostgresWakeup:
    """`LISTEN`s on a connection of its own (autocommit) and waits for a notification."""

    def __init__(self, url: sa.URL) -> None:
        self.dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.con = self.listen()

    def listen(self) -> psycopg.Connection:
        import psycopg

        con = psycopg.connect(self.dsn, autocommit=True)
        con.execute(f"LISTEN {CHANNEL}")
        return con

    def wait(self, stop: threading.Event, seconds: float) -> None:
        try:
            if list(self.con.notifies(timeout=seconds, stop_after=1)):
                list(self.con.notifies(timeout=0))  # the rest of a burst: one wake for them all
        except Exception as exc:  # the server went away: wait out the time, then listen anew
            log.warning("job wake-ups lost (%s); looking for jobs on a timer", exc)
            stop.wait(seconds)
            self.reconnect()

    def reconnect(self) -> None:
        import psycopg

        self.con.close()
        try:
            self.con = self.listen()
        except psycopg.Error:  # still down: the next wait fails at once and tries again
            pass

    def close(self) -> None:
        self.con.close()
