"""The PostgreSQL store: pgvector HNSW (cosine) per model, filters inside an iterative index scan.

The ``embedding`` column has no fixed dimension (it depends on the configured model), and pgvector
can only index a fixed one. So each model gets its own partial expression index,
``(embedding::vector(dim)) WHERE model_id = '<model>'``, created on first use; searches repeat that
expression and predicate verbatim (the predicate as a literal, never a parameter) so the planner
can match them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC

import asyncpg
import numpy as np
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    BigInteger,
    Executable,
    Float,
    Integer,
    Text,
    any_,
    bindparam,
    cast,
    column,
    delete,
    func,
    literal_column,
    select,
    table,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from retrieval.errors import StoreUnavailable
from retrieval.models import IndexedImage, IndexJob
from retrieval.store import authors
from retrieval.store.allowed import (
    KEY,
    RECORD_COLUMNS,
    permitted,
    still_wanted,
    stored_permitted,
    take_jobs,
)
from retrieval.store.base import ImageRecord, SearchHit, SearchScope
from retrieval.store.deletes import SharedDeletes, Where, routed
from retrieval.store.pgcopy import CREATE_STAGED, STAGED, copy_payload
from retrieval.store.reads import HIT_COLUMNS, SharedReads, database_errors, hit, in_guild

log = logging.getLogger(__name__)

_IDS = ARRAY(BigInteger)

# FACTS.md, 100k x 512 clustered: recall@10 0.968 at ef_search 40 and 0.989 at 100, both ~2 ms.
EF_SEARCH = 100
# How far an iterative scan may walk before giving up (pgvector's default, said out loud); a
# filter so selective that this is not enough is cheaper to answer exactly anyway.
MAX_SCAN_TUPLES = 20_000
# relaxed_order emits later scan batches out of order, and a selective filter makes most of the
# first k come from them: measured at 100k x 512 with a 2% channel filter, recall@10 was 0.79
# taking k rows from the scan, 0.90 with 2k, 1.00 with 3k and 4k; unfiltered and 20% filters
# stay at 0.99 either way (the first batch holds ef_search rows).
OVERFETCH = 4
# Building in memory is about 4x faster than spilling (FACTS.md: 33 s for 100k x 512 with 1GB);
# this is an upper bound for the one build, not a reservation.
BUILD_MEMORY = "1GB"

SEARCH_SETTINGS = text(
    "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true),"
    f" set_config('hnsw.ef_search', '{EF_SEARCH}', true),"
    f" set_config('hnsw.max_scan_tuples', '{MAX_SCAN_TUPLES}', true),"
    # Plan each search for its own filter: a generic plan cannot weigh a tiny channel list
    # against the index.
    " set_config('plan_cache_mode', 'force_custom_plan', true)"
)


def sql_literal(value: str) -> str:
    """A string constant for SQL text that cannot be a parameter (an index predicate).

    An E'' string escapes the same way whatever standard_conforming_strings says.
    """
    if "\x00" in value:
        raise ValueError("PostgreSQL strings cannot hold NUL")
    return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def index_name(model_id: str) -> str:
    return "ix_images_hnsw_" + hashlib.sha256(model_id.encode()).hexdigest()[:12]


def index_ddl(model_id: str, dim: int) -> str:
    return (
        f"CREATE INDEX IF NOT EXISTS {index_name(model_id)} ON images USING hnsw "
        f"((embedding::vector({int(dim)})) vector_cosine_ops) "
        f"WHERE model_id = {sql_literal(model_id)}"
    )


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a search statement's SQL depends on; the values themselves are parameters."""

    model_id: str
    dim: int
    channels: bool
    author: bool
    after: bool
    before: bool
    exclude: bool
    exact: bool


@functools.lru_cache(maxsize=256)
def _statement(shape: _Shape):
    vector = cast(IndexedImage.embedding, VECTOR(shape.dim))  # the indexed expression, verbatim
    probe = bindparam("query", type_=VECTOR(shape.dim))
    # The cosine_distance() function computes the same number as <=> but cannot drive an index
    # scan, so the exact path really is exact.
    if shape.exact:
        distance = func.cosine_distance(vector, probe).label("distance")
    else:
        distance = vector.cosine_distance(probe).label("distance")
    conditions = [
        IndexedImage.model_id == literal_column(sql_literal(shape.model_id)),
        IndexedImage.guild_id == bindparam("guild_id"),
        # Rows the policy refuses never show, even one that slipped in before its sweep.
        stored_permitted(per_row=True),
    ]
    if shape.channels:
        conditions.append(IndexedImage.channel_id == any_(bindparam("channel_ids", type_=_IDS)))
    if shape.author:
        conditions.append(IndexedImage.author_id == bindparam("author_id"))
    if shape.after:
        conditions.append(IndexedImage.posted_at >= bindparam("after"))
    if shape.before:
        conditions.append(IndexedImage.posted_at < bindparam("before"))
    if shape.exclude:
        conditions.append(IndexedImage.message_id != bindparam("exclude_message_id"))
    ranked = select(*HIT_COLUMNS, distance).where(*conditions).order_by(distance)
    k = bindparam("k", type_=Integer)
    if shape.exact:
        return ranked.limit(k)
    # relaxed_order hands rows back only roughly by distance; the materialized CTE sorts its
    # OVERFETCH * k candidates properly. "+ 0": PostgreSQL 17+ would otherwise trust the CTE's
    # order and skip the sort.
    relaxed = ranked.limit(bindparam("candidates", type_=Integer)).cte("relaxed")
    relaxed = relaxed.prefix_with("MATERIALIZED")
    return select(relaxed).order_by(relaxed.c.distance + literal_column("0", Float)).limit(k)


def _search(query: np.ndarray, scope: SearchScope, k: int, exact: bool):
    """The cached statement for this kind of search, and its parameters."""
    shape = _Shape(
        model_id=scope.model_id,
        dim=len(query),
        channels=scope.channel_ids is not None,
        author=scope.author_id is not None,
        after=scope.after is not None,
        before=scope.before is not None,
        exclude=scope.exclude_message_id is not None,
        exact=exact,
    )
    params = {"query": np.asarray(query, dtype=np.float32), "guild_id": scope.guild_id, "k": k}
    if not exact:
        params["candidates"] = OVERFETCH * k
    if scope.channel_ids is not None:
        params["channel_ids"] = sorted(scope.channel_ids)
    if scope.author_id is not None:
        params["author_id"] = scope.author_id
    if scope.after is not None:
        params["after"] = scope.after
    if scope.before is not None:
        params["before"] = scope.before
    if scope.exclude_message_id is not None:
        params["exclude_message_id"] = scope.exclude_message_id
    return _statement(shape), params


def search_statement(query: np.ndarray, *, scope: SearchScope, k: int, exact: bool = False):
    """The statement the store runs, values bound; public so tests can EXPLAIN it."""
    statement, params = _search(query, scope, k, exact)
    return statement.params(**params)


def _permitted_upsert(rows):
    """Insert or update the rows of ``rows`` (a table or derived table of the record columns)
    that the policy permits, by key, returning the ids written."""
    chosen = select(*(rows.c[name] for name in RECORD_COLUMNS)).where(
        permitted(rows.c.author_id, rows.c.channel_id, rows.c.parent_id)
    )
    stmt = insert(IndexedImage).from_select(list(RECORD_COLUMNS), chosen)
    return stmt.on_conflict_do_update(
        index_elements=list(KEY),
        set_={name: stmt.excluded[name] for name in RECORD_COLUMNS if name not in KEY},
    ).returning(IndexedImage.id)


def _guarded_upsert():
    """All records in one statement: arrays unnested into rows, each row kept only where the
    policy allows it (see retrieval/store/allowed.py), inserted or updated by key."""
    table = IndexedImage.__table__
    arrays = []
    for name in RECORD_COLUMNS:
        if name == "embedding":  # sent as text, the way pgvector reads vectors in
            arrays.append(cast(bindparam(name, type_=ARRAY(Text)), ARRAY(VECTOR)))
        else:
            arrays.append(bindparam(name, type_=ARRAY(table.c[name].type)))
    rows = func.unnest(*arrays).table_valued(*RECORD_COLUMNS, name="r").render_derived()
    return _permitted_upsert(rows)


_GUARDED_UPSERT = _guarded_upsert()


def _staged_upsert():
    """The staged batch (see retrieval/store/pgcopy.py) stored as `_guarded_upsert` stores
    unnested arrays: the same policy condition, by key, returning the rows written."""
    return _permitted_upsert(table(STAGED, *(column(name) for name in RECORD_COLUMNS)))


_STAGED_UPSERT = _staged_upsert()
# From this many records a batch is copied in binary and stored from a temporary table; fewer
# (a live write) go in one statement, which costs fewer round trips. Measured (loaded 2-core
# machine, 512-d): 1 record 4.7 ms by one statement, 7.9 ms by copy; 8 records 11.5 and 8.4 ms.
COPY_FROM = 8


def _vector_text(vector: np.ndarray) -> str:
    return "[" + ",".join(map(repr, np.asarray(vector, dtype=np.float32).tolist())) + "]"


def _values(record: ImageRecord) -> dict:
    values = {name: getattr(record, name) for name in ImageRecord.__slots__}
    if values["posted_at"].tzinfo is None:  # naive means UTC, as in the SQLite store
        values["posted_at"] = values["posted_at"].replace(tzinfo=UTC)
    return values


async def _stage(conn: AsyncConnection, records: Sequence[ImageRecord]) -> None:
    """Copy the records into this transaction's staging table (binary COPY on the driver's
    own connection, inside the transaction SQLAlchemy began)."""
    await conn.execute(text(CREATE_STAGED))
    raw = (await conn.get_raw_connection()).driver_connection
    # A thread: the event loop would otherwise stop for the encoding (12 ms per 2,000).
    payload = await asyncio.to_thread(copy_payload, records)

    async def source() -> AsyncIterator[bytes]:  # asyncpg takes plain bytes for a file name
        yield payload

    try:
        await raw.copy_to_table(
            STAGED, source=source(), columns=list(RECORD_COLUMNS), format="binary"
        )
    except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, ConnectionError) as exc:
        raise StoreUnavailable(f"database error: {exc}") from exc


class PgVectorStore(SharedReads, SharedDeletes):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._dims: dict[str, int] = {}
        self._indexed: set[str] = set()
        self._index_locks: dict[str, asyncio.Lock] = {}
        # Searches the index scan could not fill, answered by an exact scan instead.
        self.exact_fallbacks = 0

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        # Core connections, not ORM sessions: a search is otherwise mostly Python overhead.
        with database_errors():
            async with self.engine.begin() as conn:
                yield conn

    def _reader(self):
        return self._transaction()

    async def upsert(
        self, records: Sequence[ImageRecord], *, job_ids: Sequence[int | None] | None = None
    ) -> int:
        if not records:
            return 0
        async with self._transaction() as conn:
            taken = await take_jobs(conn, job_ids) if job_ids is not None else set()
            # One statement may not touch a row twice; the last record for a key wins, as it
            # would one at a time.
            wanted = still_wanted(records, job_ids, taken)
            latest = list({(r.message_id, r.image_key, r.guild_id): r for r in wanted}.values())
            if not latest:
                return 0
            if len(latest) >= COPY_FROM:
                await _stage(conn, latest)
                written = await conn.execute(_STAGED_UPSERT)
            else:
                rows = [_values(r) for r in latest]
                columns = {name: [row[name] for row in rows] for name in RECORD_COLUMNS}
                columns["embedding"] = [_vector_text(v) for v in columns["embedding"]]
                written = await conn.execute(_GUARDED_UPSERT, columns)
            count = len(written.all())
            # After the images, in the order a member's erasure deletes them (jobs, images,
            # pairs): two transactions never wait on each other in opposite orders.
            await authors.remember(conn, authors.pairs(latest))
            return count

    async def _dimension(self, guild_id: int, model_id: str) -> int | None:
        """The model's vector size, from any row (all rows of a model share it)."""
        if (dim := self._dims.get(model_id)) is not None:
            return dim
        async with self._transaction() as conn:
            result = await conn.execute(
                select(func.vector_dims(IndexedImage.embedding))
                .where(IndexedImage.guild_id == guild_id, IndexedImage.model_id == model_id)
                .limit(1)
            )
            dim = result.scalar_one_or_none()
        if dim is not None:
            self._dims[model_id] = dim
        return dim

    async def ensure_index(self, model_id: str, dim: int) -> None:
        """Create the model's HNSW index if it is missing (once per process and model)."""
        name = index_name(model_id)
        if name in self._indexed:
            return
        async with self._index_locks.setdefault(name, asyncio.Lock()):
            if name in self._indexed:
                return
            async with self._transaction() as conn:
                exists = await conn.scalar(text("SELECT to_regclass(:name)"), {"name": name})
            if exists is None:
                await self._build_index(model_id, dim)
            self._indexed.add(name)

    async def _build_index(self, model_id: str, dim: int) -> None:
        name = index_name(model_id)
        log.info("building HNSW index %s for model %s (dim %d)", name, model_id, dim)
        async with self._transaction() as conn:
            # Another process may be building the same index: wait for it instead of racing
            # it into a duplicate-name error.
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"), {"name": name}
            )
            await conn.execute(
                text("SELECT set_config('maintenance_work_mem', :memory, true)"),
                {"memory": BUILD_MEMORY},
            )
            await conn.execute(text(index_ddl(model_id, dim)))
        # The planner weighs the index against a filtered exact scan by row estimates; a table
        # filled moments ago has none until autovacuum comes by.
        async with self._transaction() as conn:
            await conn.execute(text("ANALYZE images"))

    async def search(self, query: np.ndarray, *, scope: SearchScope, k: int) -> list[SearchHit]:
        if k <= 0:
            return []
        dim = await self._dimension(scope.guild_id, scope.model_id)
        if dim is None or dim != len(query):
            return []
        await self.ensure_index(scope.model_id, dim)
        async with self._transaction() as conn:
            await conn.execute(SEARCH_SETTINGS)
            rows = (await conn.execute(*_search(query, scope, k, exact=False))).all()
        if len(rows) < k:
            # Either fewer than k rows pass the filter, or so few that the index scan hit
            # max_scan_tuples first; an exact scan tells the two apart and fills k.
            self.exact_fallbacks += 1
            async with self._transaction() as conn:
                rows = (await conn.execute(*_search(query, scope, k, exact=True))).all()
        return [hit(row, 1.0 - float(row.distance)) for row in rows]

    async def vectors(
        self, row_ids: Collection[int], *, guild_id: int | None = None
    ) -> dict[int, np.ndarray]:
        stmt = select(IndexedImage.id, IndexedImage.embedding).where(
            IndexedImage.id == any_(self._ids("row_ids", row_ids)), *in_guild(guild_id)
        )
        async with self._transaction() as conn:
            return {row.id: row.embedding for row in await conn.execute(stmt)}

    async def _delete(
        self,
        where: Where,
        *,
        jobs: bool = True,
        images: bool = True,
        also: Sequence[Executable] = (),
    ) -> int:
        removed = 0
        async with self._transaction() as conn:
            if jobs:
                await conn.execute(delete(IndexJob).where(*where(IndexJob)))
            if images:
                result = await conn.execute(delete(IndexedImage).where(*where(IndexedImage)))
                removed = result.rowcount
            for statement in also:
                await conn.execute(statement)
        return removed

    @staticmethod
    def _ids(name: str, values: Collection[int]):
        # One array parameter, however many ids: no bound-parameter limit to chunk around.
        return bindparam(name, [int(v) for v in values], type_=_IDS)

    async def _delete_in(
        self, name: str, values: Collection[int], *, guild_id: int | None = None
    ) -> int:
        ids = self._ids(name + "s", values)
        return await self._delete(lambda t: [getattr(t, name) == any_(ids), *routed(t, guild_id)])

    async def close(self) -> None:
        self._dims.clear()
        self._indexed.clear()


__all__ = [
    "OVERFETCH",
    "SEARCH_SETTINGS",
    "PgVectorStore",
    "index_ddl",
    "index_name",
    "search_statement",
    "sql_literal",
]
