"""Limits a server keeps so that slow or heavy requests cannot starve the others.

A :class:`Gate` admits a bounded number of requests of one kind at once (those that fetch image URLs
from remote hosts, which may drip a byte a second); a request that cannot enter within its wait gets
:class:`~tagvision.errors.Busy` (429) instead of holding one of the server's worker threads while it
queues. Decoding has its own process-wide budget (:data:`tagvision.images.DECODES`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from tagvision.errors import Busy


class Gate:
    def __init__(self, capacity: int, wait_seconds: float, what: str) -> None:
        self.capacity, self.wait_seconds, self.what = capacity, wait_seconds, what
        self._slots: anyio.Semaphore | None = None  # made in the event loop that first uses it

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the gate's places for the block; :class:`Busy` when none frees up in time."""
        if self._slots is None:
            self._slots = anyio.Semaphore(self.capacity)
        try:
            with anyio.fail_after(self.wait_seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise Busy(f"The server is already {self.what} for {self.capacity} requests; try again shortly.") from None
        try:
            yield
        finally:
            self._slots.release()
