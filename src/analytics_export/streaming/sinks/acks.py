"""The window of messages in flight to a broker, shared by the NATS and RabbitMQ sinks."""

from __future__ import annotations

import asyncio
from typing import Any


class AckWindow:
    """Counts messages a broker has yet to acknowledge (a JetStream PubAck, a RabbitMQ publisher confirm);
    `room` waits (yielding) only when it is full, so a sink keeps at most `size` in flight."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pending = 0
        self.failed = False
        self.opened = asyncio.Event()

    def add(self, future: asyncio.Future[Any]) -> None:
        self.pending += 1
        future.add_done_callback(self._settled)

    def _settled(self, future: asyncio.Future[Any]) -> None:
        self.pending -= 1
        if future.cancelled() or future.exception() is not None:
            self.failed = True
        if self.pending < self.size:
            self.opened.set()

    async def room(self, count: int, timeout: float) -> bool:
        """True once `count` more fit (at once if so); False after `timeout` seconds without progress."""
        while self.pending + count > self.size and not self.failed:
            self.opened.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self.opened.wait()
            except TimeoutError:
                return False
        return True
