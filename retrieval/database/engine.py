"""Database engine and schema checks: the app only runs on a schema at Alembic's head."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from retrieval.database.locks import Purpose, held, is_shared
from retrieval.errors import SchemaError, StoreUnavailable
from retrieval.supervisor import within

log = logging.getLogger(__name__)


def _migrations() -> Path:
    """The Alembic history: the copy a wheel carries inside the package (`setup.py` maps the
    checkout's top-level migrations/ there at build time), else the checkout's own."""
    package = Path(__file__).resolve().parent.parent  # retrieval/
    shipped = package / "migrations"
    return shipped if shipped.is_dir() else package.parent / "migrations"


MIGRATIONS = _migrations()
UPGRADE_HINT = "python -m bot db upgrade"


# SQLAlchemy's own defaults: 5 connections kept open, up to 15 at busy times.
POOL_KEPT = 5
# The most a stop waits to close the database's connections.
CLOSE_S = 1.0


# How often a process waiting for another's migrations looks whether they are done.
SCHEMA_POLL_S = 0.5


def create_engine(url: str, *, pool_max: int = 15, pool_timeout_s: float = 30.0) -> AsyncEngine:
    """An engine that opens at most ``pool_max`` connections; a statement that finds them all
    busy for ``pool_timeout_s`` fails as an outage (see `database_errors`)."""
    pool = {
        "pool_size": min(POOL_KEPT, pool_max),
        "max_overflow": pool_max - min(POOL_KEPT, pool_max),
        "pool_timeout": pool_timeout_s,
    }
    if make_url(url).get_backend_name() == "sqlite":
        # Parsed, not split: a rendered `file:` URI reads `file%3A...`, which a split would
        # take for a relative folder and create in the working directory.
        path = make_url(url).database or ""
        # A `file:` URI names a file that must exist already (see
        # retrieval/database/sqlite_file.py).
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        if not path or path == ":memory:":
            pool = {}  # one connection held for the process: no pool to size
        engine = create_async_engine(url, connect_args={"timeout": 30}, **pool)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_pre_ping=True, **pool)


async def close_engine(engine: AsyncEngine, *, within_s: float = CLOSE_S) -> None:
    """Close the engine's connections, waiting at most ``within_s``: with the database away
    (a host that does not answer), closing alone could wait for a connect timeout, and so could
    a cancelled close (see `within`); the process's end closes the sockets anyway."""
    try:
        await within(engine.dispose(), seconds=within_s)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        log.warning("could not close the database connections cleanly: %s", str(exc) or "no answer")


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets searches read while the indexer writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _head(url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None, "migrations/ has no revisions"
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    except (SQLAlchemyError, OSError) as exc:
        raise StoreUnavailable(f"cannot reach the database: {exc}") from exc


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate to ``revision``; one process at a time, and `check_schema` waits for the run."""
    async with held(engine, purpose=Purpose.SCHEMA, poll_s=SCHEMA_POLL_S):
        await _alembic(engine, command.upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Back to ``revision`` (tests of the migrations; an operator uses `alembic downgrade`)."""
    await _alembic(engine, command.downgrade, revision)


async def _alembic(engine: AsyncEngine, step, revision: str) -> None:
    config = alembic_config(engine.url.render_as_string(hide_password=False))

    def run(sync_connection) -> None:
        config.attributes["connection"] = sync_connection
        step(config, revision)

    # A connection outside a transaction: Alembic begins and commits its own, which a migration
    # with an autocommit block (CREATE INDEX CONCURRENTLY) must be able to commit early.
    async with engine.connect() as conn:
        await conn.run_sync(run)
        await conn.commit()


async def check_schema(engine: AsyncEngine) -> str | None:
    """The revision of a database this code runs on as it is, or None for an empty one.

    Changes nothing; a schema behind or ahead of the code, or foreign tables, raise SchemaError
    with the fix.
    """
    url = engine.url.render_as_string(hide_password=False)
    head, current = _head(url), await current_revision(engine)
    if current is not None and current != head and is_shared(engine):
        # Another process may be migrating it now: Alembic commits one revision at a time, so a
        # new database shows the revisions in between while the bot creates it. Wait for that
        # run to end, then look again; with none running the lock is free at once.
        try:
            async with held(engine, purpose=Purpose.SCHEMA, poll_s=SCHEMA_POLL_S):
                current = await current_revision(engine)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"cannot reach the database: {exc}") from exc
    if current == head:
        return current
    if current is None:
        if await _has_tables(engine):
            raise SchemaError(
                f"the database has tables but no clipfind schema version; run `{UPGRADE_HINT}` "
                "against an empty database, or point DATABASE_URL elsewhere"
            )
        return None
    if not _known_revision(url, current):
        raise SchemaError(
            f"the database schema ({current}) is newer than this clipfind; upgrade clipfind, "
            "or point DATABASE_URL at another database"
        )
    raise SchemaError(
        f"the database schema is at {current}, this clipfind needs {head}; run `{UPGRADE_HINT}`"
    )


async def ensure_schema(engine: AsyncEngine) -> None:
    """Create the schema in an empty database; refuse one that is behind or ahead of the code.

    A brand-new database is migrated on the spot (zero set-up); an existing one holds the
    operator's data, so upgrading it stays an explicit step they can back up before.
    """
    if await check_schema(engine) is None:
        log.info("creating the clipfind schema in a new database")
        # Finished even when a stop comes meanwhile (it takes a second or so): a schema left
        # half-made would keep the next start from running, as only an empty one is created.
        creating = asyncio.ensure_future(upgrade(engine))
        try:
            await asyncio.shield(creating)
        except asyncio.CancelledError:
            await creating
            raise


def _known_revision(url: str, revision: str) -> bool:
    script = ScriptDirectory.from_config(alembic_config(url))
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


async def _has_tables(engine: AsyncEngine) -> bool:
    from sqlalchemy import inspect

    async with engine.connect() as conn:
        names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
    return bool(set(names) - {"alembic_version"})
