"""Spreading the schema over a Citus cluster: guild-scoped tables by guild_id, the rest copied.

Run once by an operator, after the schema exists (`python -m bot citus-distribute`), on the
coordinator. Every table with a ``guild_id`` column is distributed by it, all co-located, so one
server's images, jobs, cursors and policy live on the same node and a query for one server is
routed to one shard. The small global tables (settings, opt-outs, the consumers' reports) become
reference tables: a copy on every node, so any node can join them locally. Alembic's version
table stays a plain table on the coordinator, where migrations run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from retrieval.errors import CitusUnavailable, DistributionRefused
from retrieval.models import Base

log = logging.getLogger(__name__)

DISTRIBUTION_COLUMN = "guild_id"
# Every distributed table is co-located with this one (the first created decides the shards).
ANCHOR = "images"


@dataclass
class Distribution:
    distributed: list[str] = field(default_factory=list)
    reference: list[str] = field(default_factory=list)
    # Tables that already were as wanted (a second run changes nothing).
    unchanged: list[str] = field(default_factory=list)


def plan() -> tuple[list[str], list[str]]:
    """(distributed, reference) table names, from the models: a new guild-scoped table is
    distributed without anyone remembering to add it here."""
    distributed, reference = [], []
    for table in Base.metadata.sorted_tables:
        (distributed if DISTRIBUTION_COLUMN in table.c else reference).append(table.name)
    distributed.sort(key=lambda name: name != ANCHOR)
    return distributed, reference


async def distribute(engine: AsyncEngine) -> Distribution:
    """Distribute or replicate each table that is not yet; idempotent.

    Each table is its own transaction, so a refusal (a key without guild_id, say) leaves the
    others done, and a run after the fix finishes the job. Raises DistributionRefused listing
    every refusal with Citus's reason, after trying all tables.
    """
    await _require_citus(engine)
    distributed, reference = plan()
    done = Distribution()
    refused: dict[str, str] = {}
    current = await _current_kinds(engine)
    for table in distributed + reference:
        wanted = "distributed" if table in distributed else "reference"
        if current.get(table) == wanted:
            done.unchanged.append(table)
            continue
        if table in distributed:
            # A refused anchor leaves nothing to co-locate with; the rest still share shards.
            colocate = ANCHOR if current.get(ANCHOR) == "distributed" else "default"
            statement = text(
                "SELECT create_distributed_table(:table, :column, colocate_with => :colocate)"
            ).bindparams(table=table, column=DISTRIBUTION_COLUMN, colocate=colocate)
        else:
            statement = text("SELECT create_reference_table(:table)").bindparams(table=table)
        try:
            async with engine.begin() as conn:
                await conn.execute(statement)
        except DBAPIError as exc:
            refused[table] = _citus_message(exc)
            log.error("Citus refused to distribute %s: %s", table, refused[table])
            continue
        current[table] = wanted
        getattr(done, wanted).append(table)
        log.info("%s is now a %s table", table, wanted)
    if refused:
        raise DistributionRefused(refused, done=done)
    return done


async def table_kinds(engine: AsyncEngine) -> dict[str, str]:
    """Each Citus table of this database: 'distributed' (with its column) or 'reference'."""
    return await _current_kinds(engine, with_column=True)


async def _require_citus(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        installed = await conn.scalar(
            text("SELECT extversion FROM pg_extension WHERE extname = 'citus'")
        )
    if installed is None:
        raise CitusUnavailable(
            "this database has no Citus extension: start PostgreSQL with "
            "shared_preload_libraries=citus and run CREATE EXTENSION citus in it first"
        )


async def _current_kinds(engine: AsyncEngine, *, with_column: bool = False) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT table_name::text, citus_table_type, distribution_column FROM citus_tables")
        )
        kinds = {}
        for name, kind, column in rows:
            if kind == "distributed" and with_column:
                kind = f"distributed by {column}"
            kinds[name] = kind
    return kinds


def _citus_message(exc: DBAPIError) -> str:
    # asyncpg's message and DETAIL, without SQLAlchemy's statement dump and link.
    original = exc.orig
    message = str(getattr(original, "args", [original])[0]) if original else str(exc)
    detail = getattr(getattr(original, "__cause__", None), "detail", None)
    return f"{message} ({detail})" if detail else message
