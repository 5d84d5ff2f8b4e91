"""The SQLite vector store: rows in SQLite, exact search on per-guild in-memory matrices.

The matrices share one memory budget (MATRIX_MEMORY_MB): the least recently searched guilds are
evicted and loaded again when next searched. Vectors are float32, the fastest to search; a
guild whose float32 matrix alone would not fit the budget is kept in 16 bits (half the memory,
the same top 10, a few times slower to search). One too large even so is searched straight from
SQLite, one chunk at a time: slow (about 0.6 s per 100k rows) but within the memory the
operator allowed; the operator is told once how much budget it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import Executable, String, delete, func, select, type_coerce
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)
from sqlalchemy.types import NullType

from retrieval.database.errors import database_errors
from retrieval.database.tables import QUEUE_TABLES, IndexedImage, sqlite_text
from retrieval.store import authors
from retrieval.store.allowed import (
    check_model,
    still_wanted,
    stored_permitted,
    take_jobs,
)
from retrieval.store.base import ImageRecord, SearchHit, SearchScope
from retrieval.store.deletes import SharedDeletes, Where, routed
from retrieval.store.matrix import GuildMatrix, MatrixFilter, MatrixRow, matrix_bytes
from retrieval.store.matrix_budget import DEFAULT_MATRIX_MEMORY_MB, Key, MatrixBudget
from retrieval.store.reads import HIT_COLUMNS, SharedReads, hit, in_guild
from retrieval.store.sqlite_rows import (
    DRIVER_SQL,
    RETURNING,
    driver_row,
    record_values,
    stored_row,
)
from retrieval.store.words import SharedWords, lacks

# Raw column values (no per-row type conversion on the event loop): the stored UTC time as
# text, the vector as float32 bytes; `_append_rows` converts whole chunks at once.
_MATRIX_COLUMNS = (
    IndexedImage.id,
    IndexedImage.channel_id,
    IndexedImage.author_id,
    type_coerce(IndexedImage.posted_at, String),
    type_coerce(IndexedImage.embedding, NullType),
)
# Rows read and converted at a time while a guild loads: each step holds the interpreter for a
# few milliseconds at most (10 MB of 512-d rows), so the event loop is never kept waiting long.
_LOAD_CHUNK = 5_000
_DELETE_CHUNK = 500  # stays under SQLite's bound-parameter limit

log = logging.getLogger(__name__)


class SqliteVectorStore(SharedReads, SharedDeletes, SharedWords):
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        matrix_memory_mb: float = DEFAULT_MATRIX_MEMORY_MB,
        half: bool | None = None,
    ) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.matrices = MatrixBudget(limit_bytes=int(matrix_memory_mb * 2**20))
        # None: float32 where a guild fits the budget alone, else 16 bits; True or False forces
        # one (the benchmark compares them).
        self._half = half
        self._locks: dict[Key, asyncio.Lock] = {}
        self._told_too_large: set[Key] = set()

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[AsyncSession]:
        with database_errors():
            async with self._sessions.begin() as session:
                yield session

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        # Core, not an ORM session: writes need none of its bookkeeping, and a live write is
        # mostly fixed costs.
        with database_errors():
            async with self.engine.begin() as conn:
                yield conn

    def _reader(self):
        return self._session()

    def _lock(self, key: tuple[int, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def upsert(
        self, records: Sequence[ImageRecord], *, job_ids: Sequence[int | None] | None = None
    ) -> int:
        if not records:
            return 0
        async with self._transaction() as conn:
            await check_model(conn, records)
            taken = await take_jobs(conn, job_ids) if job_ids is not None else set()
            # The last record for a key wins, as it would one at a time.
            wanted = list(
                {
                    (r.message_id, r.image_key, r.guild_id): r
                    for r in still_wanted(records, job_ids, taken)
                }.values()
            )
            if wanted:  # see authors.py
                await authors.remember(conn, authors.pairs(wanted))
            if len(wanted) == 1:  # a live write: RETURNING tells at once what to add
                (record,) = wanted
                row_id = (await conn.execute(RETURNING, record_values(record))).scalar()
                if row_id is None:  # the policy refused it
                    return 0
                written, stored = 1, [stored_row(row_id, record)]
            elif wanted:
                # One guarded statement that the driver runs once per record (executemany):
                # one call into SQLite for the batch, not a trip through the driver's thread
                # per row. Its row count leaves out what the policy refused. The parameters
                # are made in a thread: a batch of 2,000 takes a dozen milliseconds.
                rows = await asyncio.to_thread(lambda: [driver_row(r) for r in wanted])
                result = await conn.exec_driver_sql(DRIVER_SQL, rows)
                written = max(result.rowcount, 0)
                # Read back in the same transaction, so the matrices hold what was stored (a
                # refused record leaves the row it would have replaced, if any, as it was).
                stored = await self._stored_rows(conn, wanted)
            else:
                return 0
        await self._mirror(stored)
        return written

    async def _stored_rows(self, conn: AsyncConnection, records: Sequence[ImageRecord]) -> list:
        """The stored rows of ``records``' keys, as (guild, model, matrix columns...), for the
        guilds whose matrix is loaded (no other guild needs them)."""
        live = {guild_id for guild_id, _ in self.matrices.loaded()}
        keys = {(r.guild_id, r.message_id, r.image_key) for r in records if r.guild_id in live}
        messages = sorted({message_id for _, message_id, _ in keys})
        rows = []
        for start in range(0, len(messages), _DELETE_CHUNK):
            chunk = messages[start : start + _DELETE_CHUNK]
            result = await conn.execute(
                select(
                    IndexedImage.guild_id,
                    IndexedImage.model_id,
                    IndexedImage.message_id,
                    IndexedImage.image_key,
                    *_MATRIX_COLUMNS,
                ).where(IndexedImage.message_id.in_(chunk))
            )
            rows.extend(row[:2] + row[4:] for row in result if (row[0], row[2], row[3]) in keys)
        return rows

    async def _mirror(self, stored: Sequence) -> None:
        """Put stored rows into their guild's loaded matrix, and out of the matrices of the
        guild's other models (an image re-indexed by another model keeps its row id)."""
        by_key: dict[tuple[int, str], list] = {}
        for row in stored:
            by_key.setdefault((row[0], row[1]), []).append(row[2:])
        for (guild_id, model_id), rows in by_key.items():
            row_ids = [row[0] for row in rows]
            for key in [k for k in self.matrices.loaded() if k[0] == guild_id and k[1] != model_id]:
                async with self._lock(key):
                    if (other := self.matrices.get(key)) is not None:
                        other.remove(row_ids)
            async with self._lock((guild_id, model_id)):
                # An evicted guild is not loaded for a write: SQLite has the rows for its reload.
                if (matrix := self.matrices.get((guild_id, model_id))) is not None:
                    # A thread: when the matrix is full, growing it copies every row (a
                    # million-row guild: 2 GB, a fifth of a second).
                    await asyncio.to_thread(_put_rows, matrix, rows)
                    self.matrices.grew((guild_id, model_id))

    async def _matrix(self, key: Key) -> GuildMatrix | None:
        """A guild's vectors, loaded on first use or after an eviction; None when the guild
        alone is larger than the budget. The lock is held by the caller, so concurrent
        searches of one guild wait for one load.

        A large guild is a million rows: they are read in chunks and each chunk turned into
        matrix rows by a worker thread, so the event loop only passes chunks along and memory
        holds one chunk of raw rows beside the matrix.
        """
        if (matrix := self.matrices.searched(key)) is not None:
            return matrix
        in_guild = _in_guild(key)
        with database_errors():
            async with self.engine.connect() as conn:
                count = await conn.scalar(select(func.count()).where(*in_guild)) or 0
                blob = await conn.scalar(
                    select(func.length(IndexedImage.embedding)).where(*in_guild).limit(1)
                )
                dim = (blob or 0) // 4
                half = bool(self._half)
                need = matrix_bytes(rows=count, dim=dim, half=half)
                if self._half is None and not self.matrices.fits(need):
                    half = True
                    need = matrix_bytes(rows=count, dim=dim, half=half)
                if not self.matrices.fits(need):
                    fastest = matrix_bytes(rows=count, dim=dim, half=False)
                    self._tell_too_large(key, smallest=need, fastest=fastest)
                    return None
                # Room first, so memory never holds the evicted and the loading at once; and
                # counted while it loads, so two guilds loading together share the budget.
                async with self.matrices.loading(key, need):
                    matrix = GuildMatrix(0, capacity=max(64, count), half=half)
                    result = await conn.stream(
                        select(*_MATRIX_COLUMNS).where(*in_guild),
                        execution_options={"yield_per": _LOAD_CHUNK},
                    )
                    async for rows in result.partitions(_LOAD_CHUNK):
                        await asyncio.to_thread(_append_rows, matrix, rows)
                    self.matrices.put(key, matrix)
        return matrix

    def _tell_too_large(self, key: Key, *, smallest: int, fastest: int) -> None:
        if key in self._told_too_large:
            return
        self._told_too_large.add(key)
        log.warning(
            "guild %s (%s) needs %d MB of matrix memory, more than MATRIX_MEMORY_MB=%d: it is "
            "searched straight from the database, which is slow; set MATRIX_MEMORY_MB to at "
            "least %d to keep it in memory, %d for the fastest search",
            *key,
            smallest // 2**20 + 1,
            self.matrices.limit_bytes // 2**20,
            smallest // 2**20 + 1,
            fastest // 2**20 + 1,
        )

    async def _ranked(
        self, key: Key, query: np.ndarray, k: int, where: MatrixFilter
    ) -> list[tuple[int, float]]:
        async with self._lock(key):
            matrix = await self._matrix(key)
            if matrix is None:
                return await self._ranked_from_database(key, query, k, where)
            if matrix.dim and matrix.dim != len(query):
                return []
            # Off the event loop: a 100k-row product takes milliseconds, not microseconds.
            return await asyncio.to_thread(matrix.search, query, k, where)

    async def _ranked_from_database(
        self, key: Key, query: np.ndarray, k: int, where: MatrixFilter
    ) -> list[tuple[int, float]]:
        """The same answer as a matrix gives, holding one chunk of rows at a time."""
        conditions = list(_in_guild(key))
        if where.channel_ids is not None:
            conditions.append(IndexedImage.channel_id.in_(where.channel_ids))
        if where.author_id is not None:
            conditions.append(IndexedImage.author_id == where.author_id)
        # A date range is read through (guild_id, model_id, posted_at), not tested row by row.
        # The stored text compares in time order; the bounds are widened by a millisecond for
        # the float seconds they come back from, and the matrix filter below is exact.
        posted = type_coerce(IndexedImage.posted_at, String)
        if where.after_ts is not None:
            conditions.append(posted >= _stored_time(where.after_ts, -_SLACK))
        if where.before_ts is not None:
            conditions.append(posted < _stored_time(where.before_ts, _SLACK))
        best: list[tuple[int, float]] = []
        with database_errors():
            async with self.engine.connect() as conn:
                result = await conn.stream(
                    select(*_MATRIX_COLUMNS).where(*conditions),
                    execution_options={"yield_per": _LOAD_CHUNK},
                )
                async for rows in result.partitions(_LOAD_CHUNK):
                    best = await asyncio.to_thread(_best_of_chunk, rows, query, k, where, best)
                    if best is None:  # another model size
                        return []
        return best

    async def search(self, query: np.ndarray, *, scope: SearchScope, k: int) -> list[SearchHit]:
        key = (scope.guild_id, scope.model_id)
        excluded = await self._row_ids(scope.exclude_message_id)
        only = None
        if scope.words_all:  # a quoted phrase: through the text index, before the ranking
            only = await self.rows_saying(
                guild_id=scope.guild_id, model_id=scope.model_id, all_of=scope.words_all
            )
            if not only:
                return []
        where = MatrixFilter(
            channel_ids=scope.channel_ids,
            author_id=scope.author_id,
            after_ts=scope.after.timestamp() if scope.after else None,
            before_ts=scope.before.timestamp() if scope.before else None,
            exclude_row_ids=excluded,
            only_row_ids=only,
        )
        # An excluded word is tested on the ranked rows with the policy, not looked up first: a
        # common word would otherwise cost every row id that says it. Those rows leave gaps, so
        # more are ranked than asked (half again: one round for a word in a third of them).
        want = k + k // 2 if scope.words_none else k
        while True:
            ranked = await self._ranked(key, query, want, where)
            hits = await self._permitted_hits(ranked, query, lacking=scope.words_none)
            # Rows the policy hides are rare (a race, a crash before their sweep), and the
            # margin covers most excluded words: ask for more only when too many were left out
            # and the matrix had more to give.
            if len(hits) >= k or len(ranked) < want:
                return hits[:k]
            want *= 2

    async def _permitted_hits(
        self, ranked: list[tuple[int, float]], query: np.ndarray, *, lacking: Sequence[str] = ()
    ) -> list[SearchHit]:
        """The ranked rows the policy still allows, and whose words hold none of ``lacking``,
        scored again from their stored float32 vectors: a 16-bit matrix ranks, the scores
        shown and compared stay exact."""
        if not ranked:
            return []
        async with self._session() as session:
            result = await session.execute(
                select(*HIT_COLUMNS, IndexedImage.embedding).where(
                    IndexedImage.id.in_([row_id for row_id, _ in ranked]),
                    *(lacks(phrase, dialect="sqlite") for phrase in lacking),
                    stored_permitted(),
                )
            )
            by_id = {row.id: row for row in result}
        query = np.asarray(query, dtype=np.float32)
        hits = [
            hit(row, float(row.embedding @ query))
            for row_id, _ in ranked
            if (row := by_id.get(row_id)) is not None
        ]
        hits.sort(key=lambda found: -found.score)  # stable: ties keep the matrix's order
        return hits

    async def _row_ids(self, message_id: int | None) -> frozenset[int]:
        if message_id is None:
            return frozenset()
        async with self._session() as session:
            result = await session.execute(
                select(IndexedImage.id).where(IndexedImage.message_id == message_id)
            )
            return frozenset(result.scalars())

    async def vectors(
        self, row_ids: Collection[int], *, guild_id: int | None = None
    ) -> dict[int, np.ndarray]:
        ids = list(row_ids)
        found: dict[int, np.ndarray] = {}
        async with self._session() as session:
            for start in range(0, len(ids), _DELETE_CHUNK):
                chunk = ids[start : start + _DELETE_CHUNK]
                result = await session.execute(
                    select(IndexedImage.id, IndexedImage.embedding).where(
                        IndexedImage.id.in_(chunk), *in_guild(guild_id)
                    )
                )
                found.update({row.id: row.embedding for row in result})
        return found

    async def _delete(
        self,
        where: Where,
        *,
        jobs: bool = True,
        images: bool = True,
        also: Sequence[Executable] = (),
    ) -> int:
        return await self._delete_all([where], jobs=jobs, images=images, also=also)

    async def _delete_all(
        self,
        wheres: Sequence[Where],
        *,
        jobs: bool = True,
        images: bool = True,
        also: Sequence[Executable] = (),
    ) -> int:
        """Rows matching any of ``wheres``, deleted in one transaction (one commit for a
        whole id list, however many statements its length needs), then ``also``."""
        gone = []
        async with self._transaction() as conn:
            for where in wheres:
                if jobs:
                    for table in QUEUE_TABLES:
                        await conn.execute(delete(table).where(*where(table)))
                if not images:
                    continue
                stmt = (
                    delete(IndexedImage)
                    .where(*where(IndexedImage))
                    .returning(IndexedImage.id, IndexedImage.guild_id, IndexedImage.model_id)
                )
                gone += (await conn.execute(stmt)).all()
            for statement in also:
                await conn.execute(statement)
        by_key: dict[tuple[int, str], list[int]] = {}
        for row_id, guild_id, model_id in gone:
            by_key.setdefault((guild_id, model_id), []).append(row_id)
        for key, row_ids in by_key.items():
            async with self._lock(key):
                # An evicted guild is not loaded for a delete: its reload reads SQLite.
                if (matrix := self.matrices.get(key)) is not None:
                    matrix.remove(row_ids)
        return len(gone)

    async def _delete_in(
        self, name: str, values: Collection[int], *, guild_id: int | None = None
    ) -> int:
        values = list(values)
        chunks = [values[at : at + _DELETE_CHUNK] for at in range(0, len(values), _DELETE_CHUNK)]
        return await self._delete_all(
            [
                lambda t, chunk=chunk: [
                    getattr(t, name).in_(chunk),
                    *routed(t, guild_id),
                ]
                for chunk in chunks
            ]
        )

    async def delete_guild(self, guild_id: int) -> int:
        removed = await super().delete_guild(guild_id)
        for key in [key for key in self.matrices.loaded() if key[0] == guild_id]:
            self.matrices.drop(key)
        return removed

    async def close(self) -> None:
        self.matrices.clear()


_SLACK = timedelta(milliseconds=1)


def _stored_time(ts: float, shift: timedelta) -> str:
    return sqlite_text(datetime.fromtimestamp(ts, UTC) + shift)


def _in_guild(key: Key) -> tuple:
    guild_id, model_id = key
    return (IndexedImage.guild_id == guild_id, IndexedImage.model_id == model_id)


def _columns(rows: Sequence) -> dict[str, np.ndarray]:
    """(id, channel, author, posted_at text, vector bytes) rows as the matrix's columns."""
    count = len(rows)
    ids, channels, authors, posted, blobs = zip(*rows, strict=True)
    # SQLite keeps the UTC time as 'YYYY-MM-DD HH:MM:SS.ffffff'; whole microseconds divided
    # once give exactly what datetime.timestamp() gives for the same moment.
    micros = np.array(posted, dtype="datetime64[us]").astype(np.int64)
    return {
        "ids": np.fromiter(ids, dtype=np.int64, count=count),
        "channels": np.fromiter(channels, dtype=np.int64, count=count),
        "authors": np.fromiter(authors, dtype=np.int64, count=count),
        "posted": micros / 1e6,
        "vectors": np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(count, -1),
    }


def _append_rows(matrix: GuildMatrix, rows: Sequence) -> None:
    """A chunk of rows not in the matrix yet (a guild loading) into the matrix."""
    matrix.append(**_columns(rows))


def _put_rows(matrix: GuildMatrix, rows: Sequence) -> None:
    """Rows just written into the matrix: new ones appended as whole columns, rewritten ones
    (a re-delivery, a re-index) replaced in place."""
    columns = _columns(rows)
    known = np.fromiter((int(i) in matrix for i in columns["ids"]), dtype=bool, count=len(rows))
    # Several writes of one key in a batch come back as one row: ids are unique here.
    matrix.append(**{name: values[~known] for name, values in columns.items()})
    matrix.add(
        MatrixRow(int(i), int(c), int(a), float(p), v)
        for i, c, a, p, v in zip(*(values[known] for values in columns.values()), strict=True)
    )


def _best_of_chunk(
    rows: Sequence,
    query: np.ndarray,
    k: int,
    where: MatrixFilter,
    best: list[tuple[int, float]],
) -> list[tuple[int, float]] | None:
    """The k best of one streamed chunk and the best so far; None for vectors of another size."""
    chunk = GuildMatrix(0, capacity=len(rows))
    _append_rows(chunk, rows)
    if chunk.dim != len(query):
        return None
    merged = best + chunk.search(query, k, where)
    merged.sort(key=lambda ranked: -ranked[1])
    return merged[:k]


__all__ = ["SqliteVectorStore"]
