"""The SQLite file is the truth: a lost or swapped database is told apart from a first start, and
noticed while the bot runs."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy.exc import SQLAlchemyError

from retrieval.database.engine import create_engine, ensure_schema
from retrieval.database.sqlite_file import INSTALLATION_KEY, DatabaseFile, marker_path, read_marker
from retrieval.database.state import get_state, set_state
from retrieval.errors import DatabaseLost


async def start(path: Path, *, required_id: str | None = None) -> DatabaseFile:
    """What the bot does at start: claim the file, open and migrate it, record the installation."""
    database = DatabaseFile.claim(path, required_id=required_id)
    database.create_if_new()
    engine = create_engine(database.engine_url(f"sqlite+aiosqlite:///{path}?timeout=5"))
    try:
        await ensure_schema(engine)
        await database.record(engine)
    finally:
        await engine.dispose()
    return database


async def stored_id(path: Path) -> str | None:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        return await get_state(engine, INSTALLATION_KEY)
    finally:
        await engine.dispose()


async def aiosqlite_threads_done() -> None:
    # aiosqlite stops the thread of a connection that failed to open after raising, and that
    # thread reports back to the event loop: the loop must outlive it.
    for _ in range(100):
        if not any("_connection_worker_thread" in t.name for t in threading.enumerate()):
            return
        await asyncio.sleep(0.01)


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "data" / "clipfind.db"


async def test_first_start_records_the_installation_in_the_database_and_the_marker(db):
    database = await start(db)
    assert db.exists()
    assert await stored_id(db) == database.installation_id
    assert read_marker(marker_path(db)) == database.installation_id
    assert database.problem() is None


async def test_a_restart_finds_the_same_installation(db):
    first = await start(db)
    again = await start(db)
    assert again.installation_id == first.installation_id
    assert not again.new


async def test_a_missing_database_with_its_marker_is_refused_and_nothing_is_created(db):
    await start(db)
    for path in db.parent.glob("clipfind.db*"):
        if path != marker_path(db):
            path.unlink()
    with pytest.raises(DatabaseLost) as info:
        DatabaseFile.claim(db)
    message = str(info.value)
    assert f"the database {db} is missing" in message
    assert "Restore it from a backup" in message and f"delete {marker_path(db)}" in message
    assert sorted(p.name for p in db.parent.iterdir()) == ["clipfind.db.installation"]


async def test_deleting_the_marker_starts_afresh_on_purpose(db):
    first = await start(db)
    db.unlink()
    marker_path(db).unlink()
    assert (await start(db)).installation_id != first.installation_id


async def test_a_lost_data_folder_is_refused_when_installation_id_is_set(db):
    first = await start(db)
    shutil.rmtree(db.parent)
    with pytest.raises(DatabaseLost, match="INSTALLATION_ID"):
        DatabaseFile.claim(db, required_id=first.installation_id)
    assert not db.parent.exists()


async def test_installation_id_must_match_the_database(db):
    first = await start(db)
    assert (
        await start(db, required_id=first.installation_id)
    ).installation_id == first.installation_id
    with pytest.raises(DatabaseLost, match="recorded in INSTALLATION_ID"):
        DatabaseFile.claim(db, required_id="another")


async def test_another_installations_database_is_refused(db, tmp_path):
    await start(db)
    other = tmp_path / "other" / "clipfind.db"
    other_installation = (await start(other)).installation_id
    db.unlink()
    shutil.copy(other, db)
    with pytest.raises(DatabaseLost, match=f"belongs to installation {other_installation}"):
        DatabaseFile.claim(db)


async def test_an_empty_database_in_place_of_ours_is_refused(db):
    await start(db)
    db.unlink()
    db.write_bytes(b"")
    with pytest.raises(DatabaseLost, match="carries no installation id"):
        DatabaseFile.claim(db)


async def test_a_database_from_before_installation_ids_is_adopted(db):
    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    try:
        await ensure_schema(engine)
        await set_state(engine, "commands_hash", "kept")
    finally:
        await engine.dispose()
    database = await start(db)
    assert database.new
    assert await stored_id(db) == database.installation_id
    assert read_marker(marker_path(db)) == database.installation_id


async def test_a_lost_marker_is_written_again_from_the_database(db):
    first = await start(db)
    marker_path(db).unlink()
    assert (await start(db)).installation_id == first.installation_id
    assert read_marker(marker_path(db)) == first.installation_id


async def test_the_watchdog_check_notices_a_deleted_file(db):
    database = await start(db)
    db.unlink()
    assert database.problem() == f"the database file {db} was deleted"


async def test_the_watchdog_check_notices_a_deleted_folder(db):
    database = await start(db)
    shutil.rmtree(db.parent)
    assert "folder" in database.problem() and "was deleted" in database.problem()


async def test_the_watchdog_check_notices_a_file_moved_in_place(db, tmp_path):
    database = await start(db)
    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    os.replace(copy, db)  # the same bytes, but not the file the bot has open
    assert "replaced by another file" in database.problem()


async def test_the_watchdog_check_notices_a_file_overwritten_in_place(db, tmp_path):
    database = await start(db)
    other = tmp_path / "other" / "clipfind.db"
    other_installation = (await start(other)).installation_id
    identity = os.stat(db).st_ino
    db.write_bytes(other.read_bytes())  # as `cp other.db clipfind.db` does: same inode
    assert os.stat(db).st_ino == identity
    assert f"now holds installation {other_installation}" in database.problem()


async def test_the_watch_returns_once_the_file_is_gone(db):
    database = await start(db)
    watch = asyncio.create_task(database.watch(interval_s=0.05))
    await asyncio.sleep(0.2)
    assert not watch.done()
    db.unlink()
    assert "was deleted" in await asyncio.wait_for(watch, 5)


async def test_the_engine_never_creates_a_lost_file_again(tmp_path):
    db = tmp_path / "odd #1 50%" / "clip find.db"  # characters a URI must escape
    database = await start(db)
    engine = create_engine(database.engine_url(f"sqlite+aiosqlite:///{db}"))
    try:
        assert await get_state(engine, INSTALLATION_KEY) == database.installation_id
        await engine.dispose()
        db.unlink()
        with pytest.raises(SQLAlchemyError, match="unable to open database file"):
            await get_state(engine, INSTALLATION_KEY)
        await aiosqlite_threads_done()
    finally:
        await engine.dispose()
    assert not db.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd #1 50%"]


async def test_opening_the_file_creates_no_folder_where_the_process_runs(tmp_path, monkeypatch):
    """The engine's URL names the file as a `file:` URI, which SQLAlchemy renders escaped
    (`file%3A/...`): read as a plain path it made that folder in the working directory."""
    db = tmp_path / "data" / "clipfind.db"
    database = await start(db)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    engine = create_engine(database.engine_url(f"sqlite+aiosqlite:///{db}"))
    try:
        assert await get_state(engine, INSTALLATION_KEY) == database.installation_id
    finally:
        await engine.dispose()
    assert list(cwd.iterdir()) == []


async def test_the_watchdog_check_notices_a_link_pointed_elsewhere(tmp_path):
    real, other = tmp_path / "a.db", tmp_path / "b.db"
    link = tmp_path / "clipfind.db"
    await start(real)
    shutil.copy(real, other)
    link.symlink_to(real)
    database = await start(link)
    assert marker_path(link).exists()  # next to the configured path, not the link's target
    link.unlink()
    link.symlink_to(other)
    assert "replaced by another file" in database.problem()


async def test_a_check_that_may_pass_does_not_stop_the_bot(db, monkeypatch, caplog):
    import retrieval.database.sqlite_file

    database = await start(db)

    def no_handles(path):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(retrieval.database.sqlite_file, "stored_installation", no_handles)
    assert database.problem() is None
    assert "could not check the database file" in caplog.text
    db.unlink()
    assert "was deleted" in database.problem()
