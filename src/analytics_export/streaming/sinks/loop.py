"""What the broker sinks share: an asyncio client driven from the stream's thread through a private
event loop, a send at a time, the connection dropped after any failure (the next send connects)."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, Awaitable, ClassVar

from ...errors import ExportError, Upload

if TYPE_CHECKING:
    from ...destinations import Probe

log = logging.getLogger(__name__)


class LoopSink:
    """Base of a sink whose client is asyncio: subclasses name themselves (`where`), say which of
    their client's errors mean the destination failed (`client_errors`), and drop their connection."""

    connect_timeout: ClassVar[float] = 5.0
    client_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError, asyncio.TimeoutError)

    def __init__(self, thread_name: str) -> None:
        self.sending = threading.Lock()  # one send at a time
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=thread_name, daemon=True)
        self.thread.start()

    @property
    def where(self) -> str:
        raise NotImplementedError

    def _reason(self, exc: BaseException) -> str:
        raise NotImplementedError

    async def _drop(self) -> None:
        """Forget and close the connection (on the loop)."""
        raise NotImplementedError

    async def _probe(self) -> str:
        """Connect as a send would, and say what takes the messages (on the loop)."""
        raise NotImplementedError

    def probe(self, probe: Probe) -> None:
        """`POST /api/destinations/test`: connected, and the stream or queue found, without a message sent."""
        with probe.step("broker") as notes, self.sending:
            notes.append(self.call(self._probe(), self.connect_timeout * 4))

    def call(self, awaitable: Awaitable[Any], timeout: float) -> Any:
        """Run `awaitable` on the sink's loop; any failure drops the connection (the next call connects)."""
        future = asyncio.run_coroutine_threadsafe(_awaited(awaitable), self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            self._drop_soon()
            raise Upload(f"{self.where}: no answer within {timeout:.0f} s; check that the server is up") from None
        except ExportError:
            self._drop_soon()
            raise
        except self.client_errors as exc:
            self._drop_soon()
            raise Upload(f"{self.where}: {self._reason(exc)}") from None

    def _drop_soon(self, wait: float = 0) -> None:
        """Close the connection on the loop; wait up to `wait` seconds for it (a failed send does not
        wait on a dead server; the next send's connect comes after the close on the loop anyway)."""
        if not self.loop.is_running():
            return
        future = asyncio.run_coroutine_threadsafe(self._drop(), self.loop)
        if wait:
            try:
                future.result(wait)
            except Exception:  # noqa: BLE001 - the connection is abandoned either way
                log.debug("closing the connection of %s failed", self.where, exc_info=True)

    def close(self) -> None:
        if self.thread.is_alive():
            self._drop_soon(wait=self.connect_timeout + 1)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        if not self.loop.is_running():
            self.loop.close()


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
