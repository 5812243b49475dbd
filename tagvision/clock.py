"""Time as a dependency: the clock that code which waits or keeps deadlines reads and sleeps on.

Pacing, rate limits, retry backoff and download deadlines take a :class:`Clock` (default
:data:`SYSTEM`), so a test can pass a :class:`ManualClock` and assert the waits the code chose and
the deadlines it kept, exactly and at once, on any machine.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """What time-driven code asks: monotonic seconds (for intervals), UNIX time (for dates) and sleep."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock of the ``time`` module."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM: Clock = SystemClock()


class ManualClock:
    """Virtual time that moves only when told: :meth:`sleep` returns at once, records the wait in
    ``slept`` and moves the time on; :meth:`advance` moves it without a wait (the world's time, as a
    fake server's). Both clocks move together. Safe to share between threads."""

    def __init__(self, monotonic: float = 0.0, unix: float = 1_750_000_000.0) -> None:
        self._monotonic, self._unix = monotonic, unix
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def time(self) -> float:
        with self._lock:
            return self._unix

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._monotonic += max(0.0, seconds)
            self._unix += max(0.0, seconds)
