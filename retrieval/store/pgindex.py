"""Per-guild HNSW indexes on PostgreSQL, built in the background.

A guild under ``Layout.min_rows`` vectors of a model is searched exactly, through the B-tree on
``(guild_id, model_id, posted_at)``: that reads only its own rows (of the dates asked, if any),
which at that size is as fast as a graph walk and always exact. A guild above it gets its own
partial index::

    CREATE INDEX CONCURRENTLY ix_images_ann_<guild>_<model hash> ON images
        USING hnsw ((embedding::halfvec(dim)) halfvec_cosine_ops)
        WHERE guild_id = <guild> AND model_id = '<model>'

so a search walks a graph of that guild's vectors only (a shared graph makes a small guild's
search walk everyone else's vectors, and one guild's vectors hurt another's recall). Half
precision halves the index at no measurable loss of recall (benchmarks/RESULTS.md); the table
keeps float32, and shown scores are computed from it.

`IndexKeeper` builds and drops these indexes, never inside a search: writes and searches *note*
the guilds they touch, and a background task counts the noted guilds' rows (capped, through the
B-tree) and builds what is missing, ``CONCURRENTLY`` on an autocommit connection so writes go
on during the build. One build at a time across every process sharing the database (an advisory
lock); a process that finds the lock taken tries again later. A failed concurrent build leaves an
INVALID index behind; the next pass drops it and builds again, with a log line. Closing the store
cancels a running build at once (the server stops it; its connection is closed, never pooled
with the build's settings), so a bot stopped mid-build exits promptly. A guild's purge (the bot
left it) has its indexes dropped, CONCURRENTLY, after the delete's transaction; the start-up
sweep drops any index whose guild has no rows of its model left (a drop that never ran). Until
an index is valid, searches of that guild answer exactly. Each process sweeps the existing
guilds once at start (a loose index scan of the B-tree, one capped count per guild), so large
guilds nobody writes to still get theirs, e.g. after the upgrade that dropped the old per-model
indexes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from retrieval.database.citus import CITUS_VERSION
from retrieval.database.locks import AdvisoryLock, Purpose
from retrieval.store.authors import every_guild
from retrieval.supervisor import Supervisor

log = logging.getLogger(__name__)

# Building in memory is about 4x faster than spilling (100k x 512: 33 s with 1GB); an upper
# bound for the one build running at a time, not a reservation.
BUILD_MEMORY = "1GB"
PREFIX = "ix_images_ann_"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a guild's search stops being exact (benchmarks/RESULTS.md, "Many guilds")."""

    # From this many vectors of one model a guild gets its own HNSW index. An exact search
    # reads every row of the guild: about 1.5 us each for 512-d vectors kept in the row
    # (revision 0008; 4,000 scattered rows in 5.6 ms at p50), 5 us when they were TOASTed.
    min_rows: int = 2_000
    # An indexed guild that shrinks under this loses its index (hysteresis: no rebuild loops).
    drop_below: int = 500
    # Filtered searches of an indexed guild matching fewer rows than this are answered exactly:
    # a graph walk would discard most of what it visits. At 1M, one channel (4,000 rows) of
    # the largest guild (200,000): exactly 87-118 ms at p95, recall 1.0; walked 101-190 ms,
    # recall@10 0.93 and @100 0.77 (relaxed order, 40 of 50 rows visited discarded).
    exact_max_rows: int = 5_000
    # Index half precision vectors (halfvec) rather than float32 ones.
    halfvec: bool = True
    # How long a guild's count stays fresh before a new write or search has it counted again.
    recheck_s: float = 60.0


def sql_literal(value: str) -> str:
    """A string constant for SQL text that cannot be a parameter (an index predicate).

    An E'' string escapes the same way whatever standard_conforming_strings says.
    """
    if "\x00" in value:
        raise ValueError("PostgreSQL strings cannot hold NUL")
    return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def index_name(guild_id: int, model_id: str) -> str:
    # 14 + 20 + 1 + 12 characters: within PostgreSQL's 63.
    return f"{PREFIX}{int(guild_id)}_{hashlib.sha256(model_id.encode()).hexdigest()[:12]}"


def guild_pattern(guild_id: int | None) -> str:
    """A regular expression for the names of a guild's indexes, every model's, and no other
    guild's (a LIKE pattern would let guild 1's take in guild 11's: _ matches any character);
    for None, of every guild's."""
    guild = "[0-9]+" if guild_id is None else str(int(guild_id))
    return f"^{PREFIX}{guild}_[0-9a-f]{{12}}$"


def vector_type(dim: int, *, halfvec: bool) -> str:
    return f"{'halfvec' if halfvec else 'vector'}({int(dim)})"


def index_ddl(guild_id: int, model_id: str, dim: int, *, halfvec: bool) -> str:
    kind = "halfvec" if halfvec else "vector"
    return (
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index_name(guild_id, model_id)} ON images "
        f"USING hnsw ((embedding::{vector_type(dim, halfvec=halfvec)}) {kind}_cosine_ops) "
        f"WHERE guild_id = {int(guild_id)} AND model_id = {sql_literal(model_id)}"
    )


_STATE = text(
    "SELECT i.indisvalid AS valid, c.reltuples AS rows FROM pg_index i"
    " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indexrelid = to_regclass(:name)"
)
_CAPPED_COUNT = text(
    "SELECT count(*) FROM (SELECT 1 FROM images WHERE guild_id = :guild_id"
    " AND model_id = :model_id LIMIT :cap) AS counted"
)
_DIMENSION = text(
    "SELECT vector_dims(embedding) FROM images WHERE guild_id = :guild_id"
    " AND model_id = :model_id LIMIT 1"
)
_NAMED = text(
    "SELECT indexname FROM pg_indexes WHERE tablename = 'images'"
    " AND schemaname = current_schema() AND indexname ~ :pattern"
)
# Distinct (guild, model) pairs by hopping along the B-tree: one index probe per pair, not a
# read of every row.
_PAIRS = text(
    "WITH RECURSIVE pairs AS ("
    " (SELECT guild_id, model_id FROM images ORDER BY guild_id, model_id LIMIT 1)"
    " UNION ALL"
    " SELECT later.guild_id, later.model_id FROM pairs, LATERAL ("
    "  SELECT guild_id, model_id FROM images"
    "  WHERE (guild_id, model_id) > (pairs.guild_id, pairs.model_id)"
    "  ORDER BY guild_id, model_id LIMIT 1) AS later"
    ") SELECT guild_id, model_id FROM pairs"
)
# The same hops within one guild. Citus runs a recursive query over a distributed table only
# with the distribution column fixed, so there the guilds come from `author_guilds` and each
# guild's models from this.
_MODELS_OF_GUILD = text(
    "WITH RECURSIVE models AS ("
    " (SELECT model_id FROM images WHERE guild_id = :guild_id ORDER BY model_id LIMIT 1)"
    " UNION ALL"
    " SELECT later.model_id FROM models, LATERAL ("
    "  SELECT model_id FROM images WHERE guild_id = :guild_id AND model_id > models.model_id"
    "  ORDER BY model_id LIMIT 1) AS later"
    ") SELECT model_id FROM models"
)


@dataclass(frozen=True, slots=True)
class IndexState:
    valid: bool
    rows: float  # the planner's estimate, exact right after a build


async def index_state(conn: AsyncConnection, guild_id: int, model_id: str) -> IndexState | None:
    row = (await conn.execute(_STATE, {"name": index_name(guild_id, model_id)})).first()
    return None if row is None else IndexState(valid=bool(row.valid), rows=float(row.rows))


async def capped_count(conn: AsyncConnection, guild_id: int, model_id: str, cap: int) -> int:
    params = {"guild_id": guild_id, "model_id": model_id, "cap": cap}
    return int(await conn.scalar(_CAPPED_COUNT, params))


class IndexKeeper:
    """The background builder of one store; see the module docstring.

    ``changed(guild_id, model_id)`` is called after an index was built or dropped, so the
    store stops trusting what it remembered about that guild.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        layout: Layout,
        changed: Callable[[int, str], None],
        sweep: bool = True,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.engine = engine
        self._supervisor = supervisor or Supervisor()
        self.layout = layout
        self._changed = changed
        self._sweep = sweep
        self._pending: dict[tuple[int, str], int | None] = {}  # (guild, model) -> dim if known
        # Regular expressions naming indexes nothing searches any more (a purged guild's).
        self._unwanted: set[str] = set()
        self._checked: dict[tuple[int, str], float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.builds = 0  # indexes built by this process (the benchmark and tests read it)
        self.idle = asyncio.Event()  # set while nothing is pending

    def note(self, guild_id: int, model_id: str, dim: int | None = None) -> None:
        """A guild was written to or searched: have its count looked at (at most once per
        ``recheck_s``). Never blocks, never fails the caller."""
        key = (guild_id, model_id)
        if time.monotonic() - self._checked.get(key, -1e9) < self.layout.recheck_s:
            return
        if key not in self._pending or dim is not None:
            self._pending[key] = dim
        self._checked[key] = time.monotonic()
        self.idle.clear()
        self._wake.set()
        self._start()

    def purged(self, guild_id: int) -> None:
        """A guild's rows were all deleted (the bot left it): have its indexes dropped, whatever
        their model. Never blocks, never fails the caller."""
        self._unwanted.add(guild_pattern(guild_id))
        self.idle.clear()
        self._wake.set()
        self._start()

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = self._supervisor.start("clip-ann-indexes", self._run)

    async def _run(self) -> None:
        if self._sweep:
            self._sweep = False
            with _logged("sweeping guilds for HNSW indexes"):
                await self.sweep()
        while True:
            if not self._pending and not self._unwanted:
                self.idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue  # looked at again: catch_up() may have taken the work meanwhile
            if self._unwanted:
                pattern = self._unwanted.pop()
                with _logged(f"dropping the HNSW indexes named {pattern}"):
                    if await self.drop(pattern) == "busy":
                        await asyncio.sleep(5)
                        self._unwanted.add(pattern)
                continue
            (guild_id, model_id), dim = self._pending.popitem()
            with _logged(f"keeping the HNSW index of guild {guild_id} ({model_id})"):
                # Counted again by the next write or search should this pass fail.
                self._checked.pop((guild_id, model_id), None)
                outcome = await self.check(guild_id, model_id, dim)
                self._checked[(guild_id, model_id)] = time.monotonic()
                if outcome == "busy":
                    # Another process is building; come back to this guild after a while.
                    self._checked.pop((guild_id, model_id), None)
                    await asyncio.sleep(5)
                    self._pending.setdefault((guild_id, model_id), dim)

    async def sweep(self) -> None:
        async with self.engine.connect() as conn:
            # Listed before the rows: an index built meanwhile has its rows already.
            existing = set(await conn.scalars(_NAMED, {"pattern": guild_pattern(None)}))
            if await conn.scalar(CITUS_VERSION) is not None:
                pairs = []
                for guild_id in (await conn.scalars(every_guild())).all():
                    models = await conn.scalars(_MODELS_OF_GUILD, {"guild_id": guild_id})
                    pairs += [(guild_id, model_id) for model_id in models]
            else:
                pairs = (await conn.execute(_PAIRS)).all()
        # Indexes of a guild and model without a row left: a purge whose drop never ran (the
        # process stopped first, or the drop failed), a model no longer used.
        orphans = existing - {index_name(guild_id, model_id) for guild_id, model_id in pairs}
        for guild_id, model_id in pairs:
            self._pending.setdefault((guild_id, model_id), None)
        self._unwanted |= {f"^{name}$" for name in orphans}
        if pairs or orphans:
            self._wake.set()

    async def catch_up(self) -> dict[str, int]:
        """Sweep, then look at every guild now, in this task (the benchmark; an operator's
        one-off): how many indexes were built, dropped, kept, or skipped as busy."""
        await self.sweep()
        outcomes: dict[str, int] = {}
        while self._unwanted:
            outcome = await self.drop(self._unwanted.pop())
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        while self._pending:
            (guild_id, model_id), dim = self._pending.popitem()
            outcome = await self.check(guild_id, model_id, dim)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return outcomes

    async def drop(self, pattern: str) -> str:
        """Drop the guild indexes whose names match ``pattern`` (see `guild_pattern`):
        "dropped", or "busy" (another process holds the build lock). CONCURRENTLY, so
        searches and writes go on."""
        lock = AdvisoryLock(self.engine, purpose=Purpose.INDEX_BUILD)
        if not await lock.try_acquire():
            return "busy"
        try:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                for name in (await conn.scalars(_NAMED, {"pattern": pattern})).all():
                    log.info("dropping %s: its guild has no rows of its model left", name)
                    await conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
        finally:
            await lock.release()
        return "dropped"

    async def check(self, guild_id: int, model_id: str, dim: int | None = None) -> str:
        """Build, rebuild or drop this guild's index as its size says: "built", "dropped",
        "kept" (nothing to do), or "busy" (another process holds the build lock)."""
        async with self.engine.connect() as conn:
            rows = await capped_count(conn, guild_id, model_id, self.layout.min_rows)
            state = await index_state(conn, guild_id, model_id)
            await conn.rollback()
        wanted = rows >= self.layout.min_rows
        if wanted and state is not None and state.valid:
            return "kept"
        if not wanted and (state is None or (state.valid and rows >= self.layout.drop_below)):
            return "kept"
        lock = AdvisoryLock(self.engine, purpose=Purpose.INDEX_BUILD)
        if not await lock.try_acquire():
            return "busy"
        try:
            return await self._under_lock(guild_id, model_id, dim, wanted=wanted)
        finally:
            await lock.release()

    async def _under_lock(self, guild_id: int, model_id: str, dim: int | None, *, wanted: bool):
        name = index_name(guild_id, model_id)
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            # Looked at again: another process may have built it before we got the lock. No
            # build runs without the lock, so an invalid index now is a failed build's leftover.
            state = await index_state(conn, guild_id, model_id)
            if state is not None and not state.valid:
                log.warning("dropping %s, left INVALID by a failed concurrent build", name)
                await conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                state = None
            if not wanted:
                if state is None:
                    return "kept"
                log.info(
                    "guild %d shrank below %d rows: dropping %s",
                    guild_id,
                    self.layout.drop_below,
                    name,
                )
                await conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                self._changed(guild_id, model_id)
                return "dropped"
            if state is not None:
                return "kept"
            params = {"guild_id": guild_id, "model_id": model_id}
            dim = dim or await conn.scalar(_DIMENSION, params)
            if dim is None:
                return "kept"
            started = time.perf_counter()
            log.info("building %s for guild %d, model %s (dim %d)", name, guild_id, model_id, dim)
            try:
                # Session settings: CONCURRENTLY runs outside any transaction, so no SET LOCAL.
                await conn.execute(
                    text("SELECT set_config('maintenance_work_mem', :m, false)"),
                    {"m": BUILD_MEMORY},
                )
                await conn.execute(
                    text(index_ddl(guild_id, model_id, dim, halfvec=self.layout.halfvec))
                )
            except BaseException:
                # Cancelled (the store closing) or failed: the session keeps the build's memory
                # setting, and after a cancellation it can run nothing more, so it is closed,
                # never pooled. Its INVALID leftover is dropped by the next build.
                await _discard(conn)
                raise
            await conn.execute(text("RESET maintenance_work_mem"))
            # The planner weighs the new index against the B-tree by row estimates.
            await conn.execute(text("ANALYZE images"))
            log.info("built %s in %.1f s", name, time.perf_counter() - started)
        self.builds += 1
        self._changed(guild_id, model_id)
        return "built"

    async def settle(self) -> None:
        """Wait until nothing noted is left to look at (tests and the benchmark)."""
        while (
            self._pending or self._unwanted or (self._task is not None and not self.idle.is_set())
        ):
            if self._task is not None and self._task.done():
                self._task.result()
                return
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@contextlib.contextmanager
def _logged(what: str):
    """A background failure is a log line with its cause; the keeper carries on."""
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # A cancelled statement can surface as a database error (one run while cleaning up
            # after it); swallowed, it would leave close() waiting for a task that never ends.
            raise asyncio.CancelledError(f"{what}: cancelled") from exc
        log.warning("%s failed: %s; will try again", what, exc)


async def _discard(conn: AsyncConnection) -> None:
    """Close a connection's server session instead of returning it to the pool."""
    try:
        await conn.invalidate()
    except Exception as exc:  # closing is all that is left to do; the pool replaces it
        log.warning("could not close a connection after an index build: %s", exc)


__all__ = [
    "IndexKeeper",
    "IndexState",
    "Layout",
    "capped_count",
    "guild_pattern",
    "index_ddl",
    "index_name",
    "index_state",
    "sql_literal",
    "vector_type",
]
