"""Portal sessions ended on the server, and the pace of wrong logins.

A portal session lives in a signed cookie; logging out records the session's token here (hashed),
so a copy of the cookie taken before the logout is refused until it would have expired anyway.
The records live in the database, so every replica of a scaled-out server refuses them alike.

Wrong Training-Keys at the login form are answered one at a time per client, each after a delay, and
a client that keeps guessing is told to wait (:class:`LoginPace`), on an injectable clock.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from datetime import datetime, timedelta

from sqlalchemy import delete

from tagvision.clock import SYSTEM, Clock
from tagvision.errors import Busy
from tagvision.service.context import Context
from tagvision.store.models import RevokedSession, utcnow


class Sessions:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def revoke(self, token: str, lifetime_seconds: float) -> None:
        """End the session whose token is ``token`` (and forget sessions revoked long enough ago)."""
        now = utcnow()
        with self.ctx.db.session() as session:
            session.execute(delete(RevokedSession).where(RevokedSession.expires < now))
            session.merge(RevokedSession(id=_digest(token), expires=now + timedelta(seconds=lifetime_seconds)))

    def is_revoked(self, token: str) -> bool:
        with self.ctx.db.session() as session:
            row = session.get(RevokedSession, _digest(token))
            return row is not None and _aware(row.expires) > utcnow()


class LoginPace:
    """Wrong logins per client: answered one at a time, ``delay`` seconds each; after ``limit`` of them within
    ``window`` seconds the client waits out the window before it may try again (even with the right key)."""

    def __init__(self, delay: float = 0.5, limit: int = 10, window: float = 900.0, clock: Clock = SYSTEM) -> None:
        self.delay, self.limit, self.window, self.clock = delay, limit, window, clock
        self._failures: OrderedDict[str, list[float]] = OrderedDict()  # client -> times of its wrong logins
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, client: str) -> asyncio.Lock:
        """Held while one of the client's attempts is checked: its attempts never run side by side."""
        return self._locks.setdefault(client, asyncio.Lock())

    def check(self, client: str) -> None:
        """Raise :class:`Busy` when the client has used up its attempts for now."""
        recent = self._recent(client)
        if len(recent) >= self.limit:
            wait = int(recent[0] + self.window - self.clock.monotonic()) + 1
            raise Busy(f"Too many wrong keys from this address; try again in {wait} s.", retry_after=wait)

    async def failed(self, client: str) -> None:
        """Record a wrong key and hold the answer for the delay."""
        self._failures.setdefault(client, []).append(self.clock.monotonic())
        self._failures.move_to_end(client)
        while len(self._failures) > 10_000:  # bounded memory under a spray of addresses
            self._locks.pop(self._failures.popitem(last=False)[0], None)
        await asyncio.sleep(self.delay)

    def _recent(self, client: str) -> list[float]:
        since = self.clock.monotonic() - self.window
        recent = [t for t in self._failures.get(client, []) if t > since]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        return recent


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(when: datetime) -> datetime:
    """SQLite hands back naive datetimes for timezone-aware columns: they are UTC."""
    return when if when.tzinfo else when.replace(tzinfo=utcnow().tzinfo)
