"""Which guilds' matrices stay in memory: as many as fit in MATRIX_MEMORY_MB, most recently
searched first.

A matrix left out is not lost: its rows are in SQLite, writes and deletes go there alone, and
the next search loads it again (a few seconds for 200k rows, off the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator

from retrieval.store.matrix import GuildMatrix

log = logging.getLogger(__name__)

Key = tuple[int, str]  # (guild id, model id)

# A fixed size rather than a share of RAM: containers often see the host's memory, not their
# limit. 1 GB holds about 900,000 512-d vectors in 16 bits (1.2 KB a row with its columns and
# index): a server of 200,000 images four times over, and a million-image instance's busy part.
DEFAULT_MATRIX_MEMORY_MB = 1024


class MatrixBudget:
    def __init__(self, *, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._loaded: OrderedDict[Key, GuildMatrix] = OrderedDict()
        # Matrices being loaded, by the size they will have: memory they take already.
        self._loading: dict[Key, int] = {}
        self._room = asyncio.Condition()
        self.loads = 0
        self.evictions = 0

    @property
    def used_bytes(self) -> int:
        loaded = sum(matrix.nbytes for matrix in self._loaded.values())
        return loaded + sum(self._loading.values())

    def __contains__(self, key: Key) -> bool:
        return key in self._loaded

    def get(self, key: Key) -> GuildMatrix | None:
        """The loaded matrix, for a write: does not count as use."""
        return self._loaded.get(key)

    def searched(self, key: Key) -> GuildMatrix | None:
        """The loaded matrix, for a search: it becomes the last to be evicted."""
        matrix = self._loaded.get(key)
        if matrix is not None:
            self._loaded.move_to_end(key)
        return matrix

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.limit_bytes

    def make_room(self, nbytes: int, *, keep: Key | None = None) -> None:
        """Evict the least recently searched matrices until ``nbytes`` more fit."""
        used = self.used_bytes
        for key in list(self._loaded):
            if used + nbytes <= self.limit_bytes:
                return
            if key == keep:
                continue
            used -= self._loaded.pop(key).nbytes
            self.evictions += 1
            log.debug("matrix of guild %s (%s) evicted to stay under the budget", *key)

    @contextlib.asynccontextmanager
    async def loading(self, key: Key, nbytes: int) -> AsyncIterator[None]:
        """Room for a matrix of ``nbytes`` while it loads, until `put`. When matrices loading
        for other guilds leave too little, this waits for them rather than overrun the budget."""
        async with self._room:
            while True:
                self.make_room(nbytes, keep=key)
                if self.used_bytes + nbytes <= self.limit_bytes or not self._loading:
                    break
                await self._room.wait()
            self._loading[key] = nbytes
        try:
            yield
        finally:
            async with self._room:
                self._loading.pop(key, None)
                self._room.notify_all()

    def put(self, key: Key, matrix: GuildMatrix) -> None:
        self.loads += 1
        self._loading.pop(key, None)  # counted as loaded from now on
        self._loaded[key] = matrix
        self.make_room(0, keep=key)

    def grew(self, key: Key) -> None:
        """A write made a loaded matrix larger: others make way, or it goes if alone too big."""
        matrix = self._loaded.get(key)
        if matrix is None:
            return
        if not self.fits(matrix.nbytes):
            self.drop(key)
            self.evictions += 1
            return
        self.make_room(0, keep=key)

    def drop(self, key: Key) -> None:
        self._loaded.pop(key, None)

    def loaded(self) -> list[Key]:
        return list(self._loaded)

    def clear(self) -> None:
        self._loaded.clear()
