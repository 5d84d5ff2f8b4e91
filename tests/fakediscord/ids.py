"""Snowflakes, timestamps and the stand-in's clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

DISCORD_EPOCH_MS = 1420070400000


class Clock:
    """Wall time plus an offset, so tests can jump forward (token and link expiry)."""

    def __init__(self, source: Callable[[], float] = time.time) -> None:
        self._source = source
        self.offset = 0.0

    def __call__(self) -> float:
        return self._source() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Snowflakes:
    """Timestamp-based ids, strictly increasing even when the clock stands still."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last = 0
        self._increment = 0

    def next(self, at: float | None = None) -> int:
        ms = int((self._clock() if at is None else at) * 1000) - DISCORD_EPOCH_MS
        self._increment = (self._increment + 1) & 0xFFF
        value = (ms << 22) | (1 << 17) | (1 << 12) | self._increment
        # Backdated ids (history written "earlier") may go below _last; fresh ones never do.
        if at is None:
            value = max(value, self._last + 1)
            self._last = value
        return value

    def spread(self, accept: Callable[[int], bool] = lambda ms: True) -> int:
        """A fresh id in a millisecond of its own, the first one `accept` takes.

        Ids made in one millisecond share `id >> 22` and with it their shard; a guild gets a
        later millisecond than any id so far, so guilds spread over shards as Discord's do.
        """
        ms = max(int(self._clock() * 1000) - DISCORD_EPOCH_MS, (self._last >> 22) + 1)
        while not accept(ms):
            ms += 1
        self._increment = (self._increment + 1) & 0xFFF
        self._last = (ms << 22) | (1 << 17) | (1 << 12) | self._increment
        return self._last


def snowflake_seconds(snowflake: int) -> float:
    return ((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000


def iso(seconds: float | None) -> str | None:
    """ISO 8601 the way Discord writes it (microseconds, +00:00)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat()
