"""Waiting out a database outage: the one backoff every caller uses that must not drop the work
in its hands (a vector to store, a deletion Discord announced once, images to queue).

Only an outage is waited out. A statement the database refused (``StoreUnavailable.refused``)
would be refused again however long the caller waited: it is raised at once, for the caller to
record and move past (see retrieval/database/refusals.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from retrieval.errors import StoreUnavailable

T = TypeVar("T")

FIRST_S, MAX_S = 0.5, 30.0


async def patiently(
    call: Callable[[], Awaitable[T]],
    *,
    waiting: Callable[[StoreUnavailable, float], None],
    give_up: Callable[[], bool] = lambda: False,
    first_s: float | None = None,
    max_s: float | None = None,
) -> T:
    """``call()`` until the database takes it, waiting ``first_s`` doubling up to ``max_s``
    between tries; ``waiting(error, delay)`` is told before each wait (the caller logs it in its
    own words). The outage is raised at once when ``give_up()`` holds (shutting down), and a
    refusal always is."""
    delay = FIRST_S if first_s is None else first_s
    ceiling = MAX_S if max_s is None else max_s
    while True:
        try:
            return await call()
        except StoreUnavailable as exc:
            if exc.refused or give_up():
                raise
            waiting(exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, ceiling)
