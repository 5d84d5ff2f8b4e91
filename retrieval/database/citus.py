"""Spreading the schema over a Citus cluster (README, "Running on Citus").

Run once by an operator, after the schema exists (`python -m bot citus-distribute`), on the
coordinator. `images`, nearly all the data, is distributed by guild_id: a query for one server is
routed to the one node holding its shard. The policy and each member's servers become reference
tables, a copy on every node, since every write and search joins them there. The jobs queue is
claimed across servers with `FOR UPDATE SKIP LOCKED`, which Citus runs only on one node's table:
it stays on the coordinator, added to Citus's metadata so statements may join it with the others.
The small tables no statement joins with images stay plain coordinator tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from retrieval.errors import CitusUnavailable, ClipfindError

log = logging.getLogger(__name__)

DISTRIBUTION_COLUMN = "guild_id"
# The installed Citus version; None without the extension.
CITUS_VERSION = text("SELECT extversion FROM pg_extension WHERE extname = 'citus'")

# Every table of the schema is named once here, so a new one cannot be forgotten (a test
# compares these with the models).
DISTRIBUTED = ("images",)
REFERENCE = ("opt_outs", "excluded_channels", "author_guilds")
COORDINATOR = ("index_jobs", "index_failures", "failed_images")
PLAIN = ("backfill_cursors", "bot_state", "guild_departures", "index_consumers")

_CALLS = {
    "distributed": "SELECT create_distributed_table(:table, '" + DISTRIBUTION_COLUMN + "')",
    "reference": "SELECT create_reference_table(:table)",
    "local": "SELECT citus_add_local_table_to_metadata(:table)",
}


@dataclass
class Distribution:
    distributed: list[str] = field(default_factory=list)
    reference: list[str] = field(default_factory=list)
    local: list[str] = field(default_factory=list)  # coordinator tables now in Citus's metadata
    # Tables that already were as wanted (a second run changes nothing).
    unchanged: list[str] = field(default_factory=list)


class DistributionRefused(ClipfindError):
    """Citus refused to distribute some tables; the others are distributed already."""

    reason = "citus_refused"

    def __init__(self, refused: dict[str, str], *, done: Distribution) -> None:
        self.refused = refused
        self.done = done
        lines = "; ".join(f"{table}: {why}" for table, why in refused.items())
        super().__init__(f"Citus refused to distribute {len(refused)} table(s): {lines}")


def plan() -> dict[str, str]:
    """Each table Citus must know, with what it becomes: 'distributed', 'reference' or 'local'."""
    wanted = dict.fromkeys(DISTRIBUTED, "distributed")
    wanted.update(dict.fromkeys(REFERENCE, "reference"))
    wanted.update(dict.fromkeys(COORDINATOR, "local"))
    return wanted


async def distribute(engine: AsyncEngine) -> Distribution:
    """Distribute or replicate each table that is not yet; idempotent.

    Each table is its own transaction, so a refusal (a key without guild_id, say) leaves the
    others done, and a run after the fix finishes the job. Raises DistributionRefused listing
    every refusal with Citus's reason, after trying all tables.
    """
    await _require_citus(engine)
    done = Distribution()
    refused: dict[str, str] = {}
    current = await _current_kinds(engine)
    # Reference tables first: the coordinator's tables may then join them.
    for table, wanted in sorted(plan().items(), key=lambda item: item[1] != "reference"):
        if current.get(table) == wanted:
            done.unchanged.append(table)
            continue
        statement = text(_CALLS[wanted]).bindparams(table=table)
        try:
            async with engine.begin() as conn:
                await conn.execute(statement)
        except DBAPIError as exc:
            refused[table] = _citus_message(exc)
            log.error("Citus refused to make %s a %s table: %s", table, wanted, refused[table])
            continue
        current[table] = wanted
        getattr(done, wanted).append(table)
        log.info("%s is now a %s table", table, wanted)
    if refused:
        raise DistributionRefused(refused, done=done)
    return done


async def table_kinds(engine: AsyncEngine) -> dict[str, str]:
    """Each Citus table of this database: 'distributed by <column>', 'reference' or 'local'."""
    return await _current_kinds(engine, with_column=True)


async def _require_citus(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        installed = await conn.scalar(CITUS_VERSION)
    if installed is None:
        raise CitusUnavailable(
            "this database has no Citus extension: start PostgreSQL with "
            "shared_preload_libraries=citus and run CREATE EXTENSION citus in it first"
        )


async def _current_kinds(engine: AsyncEngine, *, with_column: bool = False) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT logicalrelid::regclass::text, partmethod::text, repmodel::text,"
                " column_to_column_name(logicalrelid, partkey) FROM pg_dist_partition"
            )
        )
        kinds = {}
        for name, method, replication, column in rows:
            if method == "h":
                kinds[name] = f"distributed by {column}" if with_column else "distributed"
            else:  # no distribution column: copied everywhere, or on the coordinator alone
                kinds[name] = "reference" if replication == "t" else "local"
    return kinds


def _citus_message(exc: DBAPIError) -> str:
    # asyncpg's message and DETAIL, without SQLAlchemy's statement dump and link.
    original = exc.orig
    message = str(getattr(original, "args", [original])[0]) if original else str(exc)
    detail = getattr(getattr(original, "__cause__", None), "detail", None)
    return f"{message} ({detail})" if detail else message
