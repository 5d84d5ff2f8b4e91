"""The PostgreSQL store: exact search for small guilds, a per-guild HNSW index for large ones.

The layout (retrieval/store/pgindex.py): a guild with fewer than ``Layout.min_rows`` vectors of
a model is searched exactly through the ``(guild_id, model_id, posted_at)`` B-tree; a larger one
through its own partial HNSW index over half precision vectors, built in the background. Every
search runs one scan: the plan is chosen before the query, never by trying one and falling back.
A filtered search of an indexed guild that few rows pass reads just those rows, through the
B-tree of its filter (a channel's, an author's, or this one for a date range).

The ``embedding`` column has no fixed dimension (it depends on the configured model), and pgvector
can only index a fixed one, so indexes are on ``embedding::halfvec(dim)``; searches repeat that
expression and the index's predicate verbatim (as literals, never parameters) so the planner
matches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC

import asyncpg
import numpy as np
from pgvector.sqlalchemy import HALFVEC, VECTOR
from sqlalchemy import (
    BigInteger,
    Executable,
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
from sqlalchemy.sql.elements import TextClause

from retrieval.database.citus import CITUS_VERSION
from retrieval.database.errors import database_errors
from retrieval.database.tables import QUEUE_TABLES, IndexedImage
from retrieval.errors import StoreUnavailable
from retrieval.store import authors
from retrieval.store.allowed import (
    KEY,
    RECORD_COLUMNS,
    check_model,
    permitted_in_batch,
    still_wanted,
    stored_permitted,
    take_jobs,
)
from retrieval.store.base import ImageRecord, SearchHit, SearchScope
from retrieval.store.deletes import SharedDeletes, Where, routed
from retrieval.store.pgcopy import CREATE_STAGED, STAGED, copy_payload
from retrieval.store.pgindex import IndexKeeper, Layout, index_state, sql_literal
from retrieval.store.reads import HIT_COLUMNS, SharedReads, hit, in_guild
from retrieval.store.words import (
    CUSTOM_PLANS,
    TRIGRAM,
    SharedWords,
    lacks,
    like_pattern,
    text_match,
)
from retrieval.supervisor import Supervisor

_IDS = ARRAY(BigInteger)

# 100k x 512 clustered in one graph: recall@10 0.968 at ef_search 40 and 0.989 at 100, both
# ~2 ms. Per-guild graphs of well separated topics (tests/db/test_store_tenants.py: 4,000 rows in
# 40 clusters) lost every true neighbour for 4 queries in 200 at 100, none at 150, 200 or 300.
EF_SEARCH = 200
# How far an iterative scan may walk at least; a filtered search raises it to what its filter's
# selectivity needs (see `_scan_tuples`), so the walk fills k instead of giving up.
MAX_SCAN_TUPLES = 20_000
# relaxed_order emits later scan batches out of order, and a selective filter makes most of the
# first k come from them: measured at 100k x 512 with a 2% channel filter, recall@10 was 0.79
# taking k rows from the scan, 0.90 with 2k, 1.00 with 3k and 4k; unfiltered and 20% filters
# stay at 0.99 either way (the first batch holds ef_search rows).
OVERFETCH = 4
# How long what is known about a guild's index is trusted (another process may build or drop
# it; either way a stale belief still answers correctly, only by the other plan).
STATE_TTL_S = 30.0


def search_settings(budget: int | None, *, citus: bool = False) -> TextClause:
    """Per-search settings, for this transaction only; ``budget`` as `_plan` returns it (None:
    exact). For a walk of the index, the store chose it by row counts, and sorts are
    discouraged so the planner does not swap it for reading every row of the guild through the
    B-tree and sorting them (its estimate for a partial index of a few thousand rows leans that
    way). The final sort of the candidates is in every plan, so it weighs nothing.

    On Citus the search runs over Citus's own connection to the shard's node, which
    `set_config` does not reach: Citus repeats `SET LOCAL` there when asked to, so the settings
    are set that way (one DO block: one round trip)."""
    settings = {"enable_sort": "off"} if budget is not None else {}
    settings |= {
        "hnsw.iterative_scan": "relaxed_order",
        "hnsw.ef_search": str(EF_SEARCH),
        "hnsw.max_scan_tuples": str(int(budget or MAX_SCAN_TUPLES)),
        # Plan each search for its own filter: a generic plan cannot weigh a tiny channel list
        # against the index.
        "plan_cache_mode": "force_custom_plan",
    }
    if citus:
        sets = "".join(f"SET LOCAL {name} = '{value}'; " for name, value in settings.items())
        return text(f"DO $$BEGIN SET LOCAL citus.propagate_set_commands = 'local'; {sets}END$$")
    return text(
        "SELECT " + ", ".join(f"set_config('{n}', '{v}', true)" for n, v in settings.items())
    )


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a search statement's SQL depends on; the values themselves are parameters, except
    the guild of an index scan, which must be a literal to match its index's predicate."""

    model_id: str
    dim: int
    channels: bool
    author: bool
    after: bool
    before: bool
    exclude: bool
    guild_id: int | None  # None: exact; a guild: through its HNSW index
    halfvec: bool = True
    # The words filters: per phrase the text must hold, whether it is too short for trigrams;
    # how many phrases it must not hold.
    words_all: tuple[bool, ...] = ()
    words_none: int = 0


def _filters(shape: _Shape, *, policy: bool = True, model: bool = True) -> list:
    conditions = []
    if model:
        conditions.append(IndexedImage.model_id == literal_column(sql_literal(shape.model_id)))
    if policy:
        # Rows the policy refuses never show, even one that slipped in before its sweep.
        conditions.append(stored_permitted(per_row=True))
    if shape.guild_id is None:
        conditions.append(IndexedImage.guild_id == bindparam("guild_id"))
    else:
        conditions.append(IndexedImage.guild_id == literal_column(str(int(shape.guild_id))))
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
    for i, short in enumerate(shape.words_all):
        value = bindparam(f"words_all_{i}", type_=Text)
        conditions.append(text_match(value, short=short, dialect="postgresql"))
    for i in range(shape.words_none):
        value = bindparam(f"words_none_{i}", type_=Text)
        conditions.append(lacks(value, dialect="postgresql"))
    return conditions


@functools.lru_cache(maxsize=256)
def _statement(shape: _Shape):
    stored = cast(IndexedImage.embedding, VECTOR(shape.dim))
    probe = bindparam("query", type_=VECTOR(shape.dim))
    # The cosine_distance() function computes the same number as <=> but cannot drive an index
    # scan: the exact path is exact, and the scores shown are float32 whatever the index holds.
    distance = func.cosine_distance(stored, probe).label("distance")
    ranked = select(*HIT_COLUMNS, distance).where(*_filters(shape))
    k = bindparam("k", type_=Integer)
    if shape.guild_id is None:
        return ranked.order_by(distance).limit(k)
    kind = HALFVEC if shape.halfvec else VECTOR
    indexed = cast(IndexedImage.embedding, kind(shape.dim))  # the indexed expression, verbatim
    approximate = indexed.cosine_distance(cast(probe, kind(shape.dim)))
    # relaxed_order hands rows back only roughly by distance, and in half precision; the
    # materialized CTE's OVERFETCH * k candidates are ranked again by their float32 distance.
    relaxed = ranked.order_by(approximate).limit(bindparam("candidates", type_=Integer))
    relaxed = relaxed.cte("relaxed").prefix_with("MATERIALIZED")
    return select(relaxed).order_by(relaxed.c.distance).limit(k)


def _filtered(scope: SearchScope) -> bool:
    """Whether the scope narrows the guild enough to matter (one excluded message does not,
    nor an excluded word: it leaves out some rows, tested as the scan meets them)."""
    return bool(scope.words_all) or any(
        value is not None
        for value in (scope.channel_ids, scope.author_id, scope.after, scope.before)
    )


def _search(query: np.ndarray, scope: SearchScope, k: int, *, indexed: bool, halfvec: bool = True):
    """The cached statement for this kind of search, and its parameters."""
    shape = _Shape(
        model_id=scope.model_id,
        dim=len(query),
        channels=scope.channel_ids is not None,
        author=scope.author_id is not None,
        after=scope.after is not None,
        before=scope.before is not None,
        exclude=scope.exclude_message_id is not None,
        guild_id=scope.guild_id if indexed else None,
        halfvec=halfvec,
        **_words_shape(scope),
    )
    params = {"query": np.asarray(query, dtype=np.float32), "k": k}
    if indexed:
        params["candidates"] = OVERFETCH * k
    else:
        params["guild_id"] = scope.guild_id
    params.update(_filter_params(scope))
    if scope.exclude_message_id is not None:
        params["exclude_message_id"] = scope.exclude_message_id
    return _statement(shape), params


def search_statement(
    query: np.ndarray, *, scope: SearchScope, k: int, indexed: bool, halfvec: bool = True
):
    """The statement the store runs, values bound; public so tests can EXPLAIN it."""
    statement, params = _search(query, scope, k, indexed=indexed, halfvec=halfvec)
    return statement.params(**params)


def _permitted_upsert(rows):
    """Insert or update the rows of ``rows`` (a table or derived table of the record columns)
    that the policy permits, by key, returning the ids written."""
    chosen = select(*(rows.c[name] for name in RECORD_COLUMNS)).where(
        permitted_in_batch(rows.c.author_id, rows.c.channel_id, rows.c.parent_id)
    )
    stmt = insert(IndexedImage).from_select(list(RECORD_COLUMNS), chosen)
    return stmt.on_conflict_do_update(
        index_elements=list(KEY),
        set_={name: stmt.excluded[name] for name in RECORD_COLUMNS if name not in KEY},
    ).returning(IndexedImage.id)


def _matching(scope: SearchScope, cap: int):
    """How many rows pass the scope's filters, counted through B-trees up to ``cap``."""
    shape = _Shape(
        model_id=scope.model_id,
        dim=0,
        channels=scope.channel_ids is not None,
        author=scope.author_id is not None,
        after=scope.after is not None,
        before=scope.before is not None,
        exclude=False,
        guild_id=None,
        # Excluded words are left out of the count: they keep most rows, and testing each
        # row's words would cost more than the count saves.
        **_words_shape(dataclasses.replace(scope, words_none=())),
    )
    # The model only where the dates' B-tree holds it: the channel and author B-trees do not,
    # and asking it there reads a heap row per row counted (a channel filter covering a large
    # guild: 5,000 rows, 9 ms, instead of an index-only count under 1 ms). Rows of another
    # model are there only during a model switch: counted too, they can only send the search
    # to the index, whose short walks the exact scan completes.
    conditions = _filters(shape, policy=False, model=shape.after or shape.before)
    inner = select(literal_column("1")).select_from(IndexedImage).where(*conditions).limit(cap)
    params = {"guild_id": scope.guild_id, **_filter_params(scope, words_none=False)}
    return select(func.count()).select_from(inner.subquery()).params(**params)


def _filter_params(scope: SearchScope, *, words_none: bool = True) -> dict:
    """The values of the scope's optional filters, by the names the statements bind (the
    excluded words' only with ``words_none``)."""
    params: dict = {}
    if scope.channel_ids is not None:
        params["channel_ids"] = sorted(scope.channel_ids)
    if scope.author_id is not None:
        params["author_id"] = scope.author_id
    if scope.after is not None:
        params["after"] = scope.after
    if scope.before is not None:
        params["before"] = scope.before
    for i, phrase in enumerate(scope.words_all):
        params[f"words_all_{i}"] = phrase if len(phrase) < TRIGRAM else like_pattern(phrase)
    for i, phrase in enumerate(scope.words_none if words_none else ()):
        params[f"words_none_{i}"] = phrase
    return params


def _words_shape(scope: SearchScope) -> dict:
    return {
        "words_all": tuple(len(phrase) < TRIGRAM for phrase in scope.words_all),
        "words_none": len(scope.words_none),
    }


def _scan_tuples(*, candidates: int, guild_rows: float, matching: int) -> int:
    """Enough tuples for the iterative scan to meet ``candidates`` rows passing a filter that
    keeps ``matching`` of ``guild_rows`` (at least), with a margin of two."""
    if matching <= 0:
        return MAX_SCAN_TUPLES
    return max(MAX_SCAN_TUPLES, math.ceil(2 * candidates * max(guild_rows, 1) / matching))


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


class PgVectorStore(SharedReads, SharedDeletes, SharedWords):
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        layout: Layout | None = None,
        sweep: bool = True,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.engine = engine
        self.layout = layout or Layout()
        self._dims: dict[str, int] = {}
        # (guild, model) -> (index state or None, when looked up)
        self._states: dict[tuple[int, str], tuple[object, float]] = {}
        self.indexes = IndexKeeper(
            engine, layout=self.layout, changed=self._forget, sweep=sweep, supervisor=supervisor
        )
        self._citus: bool | None = None
        # Searches that ran a second scan because the first fell short of k (target: none).
        self.two_scans = 0

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
            await check_model(conn, records)
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
        # Growing guilds are counted in the background, and get their index past the threshold.
        for guild_id, model_id, dim in {(r.guild_id, r.model_id, len(r.embedding)) for r in latest}:
            self.indexes.note(guild_id, model_id, dim)
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

    async def on_citus(self, conn: AsyncConnection) -> bool:
        """Whether the database is a Citus coordinator (asked once)."""
        if self._citus is None:
            self._citus = await conn.scalar(CITUS_VERSION) is not None
        return self._citus

    def _forget(self, guild_id: int, model_id: str) -> None:
        self._states.pop((guild_id, model_id), None)

    async def _index_state(self, conn: AsyncConnection, scope: SearchScope):
        key = (scope.guild_id, scope.model_id)
        known = self._states.get(key)
        if known is not None and time.monotonic() - known[1] < STATE_TTL_S:
            return known[0]
        state = await index_state(conn, scope.guild_id, scope.model_id)
        self._states[key] = (state, time.monotonic())
        return state

    async def _plan(self, conn: AsyncConnection, scope: SearchScope, k: int) -> int | None:
        """None to answer exactly; else the iterative scan's tuple budget for the index."""
        state = await self._index_state(conn, scope)
        if state is None or not state.valid:
            return None
        if not _filtered(scope):
            return MAX_SCAN_TUPLES
        cap = self.layout.exact_max_rows
        await conn.execute(CUSTOM_PLANS)
        matching = int(await conn.scalar(_matching(scope, cap)))
        if matching < cap:
            return None  # few rows pass: reading them is cheaper than a walk that skips the rest
        return _scan_tuples(candidates=OVERFETCH * k, guild_rows=state.rows, matching=matching)

    async def search(self, query: np.ndarray, *, scope: SearchScope, k: int) -> list[SearchHit]:
        if k <= 0:
            return []
        dim = await self._dimension(scope.guild_id, scope.model_id)
        if dim is None or dim != len(query):
            return []
        async with self._transaction() as conn:
            budget = await self._plan(conn, scope, k)
            await conn.execute(search_settings(budget, citus=await self.on_citus(conn)))
            if budget is None:
                self.indexes.note(scope.guild_id, scope.model_id, dim)
                rows = (await conn.execute(*_search(query, scope, k, indexed=False))).all()
            else:
                statement = _search(query, scope, k, indexed=True, halfvec=self.layout.halfvec)
                rows = (await conn.execute(*statement)).all()
                if len(rows) < k and _filtered(scope):
                    # The walk ran out of budget before k rows passed the filter: should not
                    # happen with the budget above, but an answer short of rows that exist
                    # would be wrong.
                    self.two_scans += 1
                    rows = (await conn.execute(*_search(query, scope, k, indexed=False))).all()
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
                for table in QUEUE_TABLES:
                    await conn.execute(delete(table).where(*where(table)))
            if images:
                result = await conn.execute(delete(IndexedImage).where(*where(IndexedImage)))
                removed = result.rowcount
            for statement in also:
                await conn.execute(statement)
        return removed

    async def delete_guild(self, guild_id: int) -> int:
        removed = await super().delete_guild(guild_id)
        # Its HNSW indexes go as well, in the background: DROP INDEX CONCURRENTLY cannot run
        # in the delete's transaction, and waits for every transaction reading the table.
        for key in [key for key in self._states if key[0] == guild_id]:
            del self._states[key]
        self.indexes.purged(guild_id)
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
        await self.indexes.close()
        self._dims.clear()
        self._states.clear()


__all__ = [
    "OVERFETCH",
    "search_settings",
    "PgVectorStore",
    "search_statement",
]
