"""Schema management: a new database is created; any other mismatch stops start-up with the fix."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from retrieval.database.engine import UPGRADE_HINT, create_engine, current_revision, ensure_schema
from retrieval.errors import SchemaError


@pytest.fixture
async def engine(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/nested/dir/clipfind.db")
    yield engine
    await engine.dispose()


async def test_new_database_is_created_and_migrated(engine, tmp_path):
    assert await current_revision(engine) is None
    await ensure_schema(engine)
    assert (tmp_path / "nested/dir/clipfind.db").exists()
    head = await current_revision(engine)
    assert head is not None
    await ensure_schema(engine)  # idempotent at head
    assert await current_revision(engine) == head


async def test_schema_newer_than_the_code_is_refused(engine):
    await ensure_schema(engine)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_from_the_future'"))
    with pytest.raises(SchemaError, match="newer than this clipfind"):
        await ensure_schema(engine)


async def test_foreign_tables_without_a_version_are_refused(engine):
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE images (id INTEGER PRIMARY KEY)"))
    with pytest.raises(SchemaError, match="no clipfind schema version"):
        await ensure_schema(engine)


async def test_behind_schema_names_the_upgrade_command(engine, monkeypatch):
    import retrieval.database.engine

    await ensure_schema(engine)
    current = await current_revision(engine)
    # Pretend the code moved on by one revision: the stored one is then behind.
    monkeypatch.setattr(retrieval.database.engine, "_head", lambda url: "9999_next")
    with pytest.raises(SchemaError, match=UPGRADE_HINT) as info:
        await ensure_schema(engine)
    assert current in str(info.value)


def test_cli_db_upgrade(tmp_path, monkeypatch, caplog):
    from bot.cli import main

    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/cli.db")
    monkeypatch.chdir(tmp_path)  # no stray .env
    assert main(["db", "upgrade"]) == 0
    assert (tmp_path / "cli.db").exists()


def test_cli_reports_bad_settings(monkeypatch, tmp_path, caplog):
    from bot.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIP_DEVICE", "gpu0")
    assert main(["db", "current"]) == 2
    assert "CLIP_DEVICE" in caplog.text


async def _differences(engine) -> list:
    """What autogenerate would change to make the migrated schema match the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from retrieval.database.tables import Base, schema_filter

    def compare(sync):
        include = schema_filter(sync.dialect.name)
        context = MigrationContext.configure(sync, opts={"include_object": include})
        return compare_metadata(context, Base.metadata)

    async with engine.connect() as conn:
        return await conn.run_sync(compare)


async def test_migrations_match_the_models(engine):
    await ensure_schema(engine)
    assert await _differences(engine) == []


async def test_migrations_match_the_models_on_postgresql(postgres_engine):
    assert await _differences(postgres_engine) == []


async def test_a_schema_another_process_is_migrating_is_waited_for_not_refused(
    postgres_server, monkeypatch
):
    """A worker or a second gateway started beside the bot that creates a new database reads
    the revisions in between (Alembic commits one at a time): it waits for the run to end
    instead of stopping with 'run db upgrade'."""
    import asyncio

    from alembic import command

    import retrieval.database.engine
    from retrieval.database.engine import check_schema
    from retrieval.database.locks import AdvisoryLock, Purpose
    from tests.conftest import fresh_database

    async with fresh_database(postgres_server, citus=False, revision="0003") as engine:
        migrating = AdvisoryLock(engine, purpose=Purpose.SCHEMA)  # the other process's run
        await migrating.acquire()
        tried = asyncio.Event()
        try_acquire = AdvisoryLock.try_acquire

        async def noted(lock):
            tried.set()
            return await try_acquire(lock)

        monkeypatch.setattr(AdvisoryLock, "try_acquire", noted)
        try:
            checking = asyncio.create_task(check_schema(engine))
            waiting = asyncio.create_task(tried.wait())
            await asyncio.wait([checking, waiting], return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            assert not checking.done(), "the schema in between was judged, not waited for"
            await retrieval.database.engine._alembic(engine, command.upgrade, "head")
            await migrating.release()
            assert await checking == await current_revision(engine)
        finally:
            await migrating.release()
