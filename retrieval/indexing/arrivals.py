"""Images on their way to the jobs table: read from Discord, not yet written as rows.

A deletion takes the job rows it covers in its own transaction, and a job whose row is gone is
never stored (retrieval/store/deletes.py), so an image already queued, downloading or in a batch
stays deleted. Out of its reach is an image read before the deletion and written as a row after
it: a burst waiting for its transaction, a backfill page read before the deletion and queued
after it. Whoever reads images and writes them carries them as an arrival; a deletion asks, as it
starts, which arrivals are open, and runs once more when those have landed (bot/erasure.py).
That costs a second statement only when something was on its way, and never a poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class Arrivals:
    def __init__(self) -> None:
        self._open: set[asyncio.Future[None]] = set()

    @contextlib.contextmanager
    def carrying(self) -> Iterator[None]:
        """Around reading images and writing them as rows (entered before the first read)."""
        landed = asyncio.get_running_loop().create_future()
        self._open.add(landed)
        try:
            yield
        finally:
            self._open.discard(landed)
            landed.set_result(None)

    def open(self) -> list[asyncio.Future[None]]:
        """The arrivals on their way now, each done once it has landed (or was abandoned);
        empty when nothing is on its way."""
        return list(self._open)
