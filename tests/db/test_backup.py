"""The SQLite backup that docs/operating.md tells operators to take, run as written: taken while
the database is open and being written, it holds one consistent state, and restored as the page
says, it is accepted as this installation's database with what was in it then."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

from retrieval.database.engine import create_engine, ensure_schema
from retrieval.database.sqlite_file import DatabaseFile
from retrieval.policy.index_policy import IndexPolicy

OPERATING = Path(__file__).resolve().parents[2] / "docs" / "operating.md"


def documented_backup() -> str:
    """The first bash block under "### Backing it up" in docs/operating.md."""
    text = OPERATING.read_text(encoding="utf-8")
    section = text.split("### Backing it up", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.DOTALL)[1]


async def opened(path: Path) -> tuple[DatabaseFile, object]:
    """What the bot does at start: claim the file, open it read-write, migrate, record."""
    database = DatabaseFile.claim(path)
    database.create_if_new()
    engine = create_engine(database.engine_url(f"sqlite+aiosqlite:///{path}"))
    await ensure_schema(engine)
    await database.record(engine)
    return database, engine


async def opted_out(engine) -> set[int]:
    policy = IndexPolicy(engine)
    await policy.load()
    return {user for user in (1, 2) if policy.is_opted_out(user)}


async def test_the_documented_backup_taken_while_running_restores_as_this_installation(tmp_path):
    db = tmp_path / "data" / "clipfind.db"
    database, engine = await opened(db)
    try:
        await IndexPolicy(engine).opt_out(1)
        # The bot still has the file open, in WAL mode, when the operator runs the command.
        command = documented_backup().replace(".venv/bin/python", sys.executable)
        backing_up = await asyncio.create_subprocess_exec("bash", "-c", command, cwd=tmp_path)
        assert await asyncio.wait_for(backing_up.wait(), timeout=60) == 0
        await IndexPolicy(engine).opt_out(2)  # after the backup: not in it
    finally:
        await engine.dispose()
    backup = tmp_path / "clipfind-backup.db"
    assert backup.exists()

    # Restoring, as the page says: move the database aside, drop its WAL files, copy the backup.
    shutil.move(db, tmp_path / "moved-aside.db")
    for leftover in ("clipfind.db-wal", "clipfind.db-shm"):
        (db.parent / leftover).unlink(missing_ok=True)
    shutil.copy(backup, db)

    again, engine = await opened(db)
    try:
        assert again.installation_id == database.installation_id and not again.new
        assert await opted_out(engine) == {1}
    finally:
        await engine.dispose()
