"""The SQLite file is the truth: a lost or swapped database stops the bot instead of being re-made.

SQLite creates a missing file without a word, and a process keeps writing into a file deleted
under it. Either way the bot would later run on an empty index that has forgotten every opt-out
and excluded channel. So each installation gets an id, stored inside the database (`bot_state`)
and in a marker file next to it (and, if the operator sets it, in `INSTALLATION_ID`): a start
that finds the marker or the setting but not the matching database refuses, and a watchdog stops
the running bot when the file at the path is no longer the one it opened. Between two looks of the
watchdog, a change a member or a manager is told is done (an opt-out, an exclusion) is first
confirmed to be in that file (`confirm`): a write into a deleted file is no promise kept.

SQLite also serves one process only (the jobs table, the caches and the start-up bookkeeping all
count on it), so the process running on the file holds an exclusive lock on a file next to it,
and a second one refuses to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from retrieval.database.state import get_state, set_state
from retrieval.errors import DatabaseInUse, DatabaseLost

log = logging.getLogger(__name__)

INSTALLATION_KEY = "installation_id"
_AFRESH = "an empty index that has forgotten every opt-out and excluded channel"


def marker_path(database: Path) -> Path:
    return database.with_name(database.name + ".installation")


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


@contextlib.contextmanager
def sole_process(database: Path) -> Iterator[None]:
    """Hold the database's lock file for as long as this process uses it; the kernel lets go
    when the process ends, however it ends.

    Raises DatabaseInUse, naming the other process, when one holds it already.
    """
    lock = lock_path(database.absolute())
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatabaseInUse(
                f"another process{_holder(lock)} is running on the SQLite database {database} "
                f"(it holds {lock}). SQLite serves one process: stop that one first, or, to run "
                "several processes (bots, workers) on one index, use PostgreSQL "
                "(DATABASE_URL=postgresql+asyncpg://...)"
            ) from None
        # Who holds it, for the next one's message; the lock, not this text, is what counts.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def check_sole_process(database: Path) -> None:
    """Raise DatabaseInUse if a process holds the database now; creates nothing."""
    if lock_path(database.absolute()).exists():
        with sole_process(database):
            pass


def _holder(lock: Path) -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return f" (pid {int(lock.read_text(encoding='ascii').split()[0])})"
    return ""


def read_marker(marker: Path) -> str | None:
    try:
        first = marker.read_text(encoding="utf-8").splitlines()[:1]
    except FileNotFoundError:
        return None
    return (first[0].strip() or None) if first else None


def stored_installation(database: Path) -> str | None:
    """The id inside the database file, read without creating or changing anything.

    Raises sqlite3.Error when the file cannot be read as a database.
    """
    uri = database.absolute().as_uri() + "?mode=ro"
    # closing(): sqlite3's own context manager commits but does not close.
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as conn:
        try:
            row = conn.execute(
                "SELECT value FROM bot_state WHERE key = ?", (INSTALLATION_KEY,)
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
    return row[0] if row else None


@dataclass
class DatabaseFile:
    """The SQLite file this process runs on, and the installation it belongs to."""

    path: Path
    installation_id: str
    # Whether the database still has to be given the id (first start, or one from before ids).
    new: bool = False
    identity: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def marker(self) -> Path:
        return marker_path(self.path)

    @classmethod
    def claim(cls, path: Path, *, required_id: str | None = None) -> DatabaseFile:
        """Check, before anything opens it, that `path` is this installation's database.

        Raises DatabaseLost with what happened and how to go on; creates nothing.
        """
        # Not resolved: a symbolic link pointed at another file counts as a replaced one.
        path = path.absolute()
        marker = marker_path(path)
        recorded = read_marker(marker)
        if not path.exists():
            if recorded is not None:
                raise DatabaseLost(
                    f"the database {path} is missing, but {marker} shows that this installation "
                    f"({recorded}) had one. Restore it from a backup; or, to start afresh with "
                    f"{_AFRESH}, delete {marker}"
                )
            if required_id is not None:
                raise DatabaseLost(
                    f"the database {path} is missing, but INSTALLATION_ID ({required_id}) says "
                    "this installation had one. Check DATABASE_URL and the working directory, "
                    f"or restore the database from a backup; or, to start afresh with {_AFRESH}, "
                    "remove INSTALLATION_ID"
                )
            return cls(path=path, installation_id=uuid.uuid4().hex, new=True)
        try:
            stored = stored_installation(path)
        except sqlite3.DatabaseError:
            stored = None  # not a database of ours: the schema check says more if nothing else
        for expected, where, adopt in (
            (recorded, str(marker), f"delete {marker}"),
            (required_id, "INSTALLATION_ID", "change INSTALLATION_ID"),
        ):
            if expected is not None and stored != expected:
                found = (
                    f"belongs to installation {stored}"
                    if stored
                    else "carries no installation id (an empty database, or one from elsewhere)"
                )
                raise DatabaseLost(
                    f"the database {path} {found}, but this installation is {expected} "
                    f"(recorded in {where}): the database was replaced. Put this installation's "
                    f"database back; or, to run on the one now there, {adopt}"
                )
        if stored is None:
            # A database from before installation ids: it is the truth, adopt it.
            return cls(path=path, installation_id=uuid.uuid4().hex, new=True)
        return cls(path=path, installation_id=stored)

    def create_if_new(self) -> None:
        """A first start makes the file (empty: the schema comes next); later ones only open it."""
        if self.new and not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()

    def engine_url(self, configured: str) -> str:
        """`configured`, opening this file read-write, which SQLite never does by creating it:
        a connection made after the file was lost fails instead of starting an empty one."""
        url = make_url(configured).set(database="file:" + quote(str(self.path)))
        url = url.update_query_dict({"mode": "rw", "uri": "true"})
        return url.render_as_string(hide_password=False)

    async def record(self, engine: AsyncEngine) -> None:
        """Once the schema exists: store the id, write the marker, remember which file this is."""
        if self.new:
            await set_state(engine, INSTALLATION_KEY, self.installation_id)
            log.info(
                "this installation is %s (recorded in %s and %s); to also notice a lost data "
                "folder, set INSTALLATION_ID=%s",
                self.installation_id,
                self.path,
                self.marker,
                self.installation_id,
            )
        elif await get_state(engine, INSTALLATION_KEY) != self.installation_id:
            raise DatabaseLost(f"the database {self.path} changed while clipfind opened it")
        if read_marker(self.marker) != self.installation_id:
            _write_marker(self.marker, self.installation_id, database=self.path)
        self.identity = _identity(self.path)

    def problem(self) -> str | None:
        """What happened to the database file since `record`, or None while it is the same.

        Only what is certain counts: an error that may pass (a lock, no file handles left) is
        logged and looked at again next time rather than stopping the bot.
        """
        try:
            if not self.path.parent.exists():
                return f"the database folder {self.path.parent} was deleted"
            identity = _identity(self.path)
            if identity != self.identity:
                return f"the database file {self.path} was replaced by another file"
            stored = stored_installation(self.path)
        except FileNotFoundError:
            return f"the database file {self.path} was deleted"
        except (OSError, sqlite3.OperationalError) as exc:
            log.warning("could not check the database file %s (%s); trying again", self.path, exc)
            return None
        except sqlite3.DatabaseError as exc:
            return f"the database file {self.path} was overwritten ({exc})"
        if stored != self.installation_id:
            found = f"installation {stored}" if stored else "no installation id"
            return f"the database file {self.path} was overwritten (it now holds {found})"
        return None

    async def confirm(self) -> None:
        """Raise DatabaseLost if what was just written went into a file that is no longer the
        database at the path (deleted, replaced or overwritten since it was opened)."""
        problem = await asyncio.to_thread(self.problem)
        if problem is not None:
            raise DatabaseLost(f"{problem}; what was just written there is not kept")

    async def watch(self, *, interval_s: float) -> str:
        """Look at the file every `interval_s` seconds; returns what happened once it changed."""
        while True:
            await asyncio.sleep(interval_s)
            problem = await asyncio.to_thread(self.problem)
            if problem is not None:
                return problem


def _identity(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _write_marker(marker: Path, installation_id: str, *, database: Path) -> None:
    # Written whole or not at all: a torn marker would refuse the next start.
    text = (
        f"{installation_id}\n"
        f"# clipfind: {database.name} next to this file is the database of installation "
        f"{installation_id}.\n"
        "# If the database goes missing, clipfind refuses to start rather than begin again with\n"
        "# an empty index. Restore the database from a backup; delete this file only to start\n"
        "# afresh on purpose.\n"
    )
    partial = marker.with_name(marker.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, marker)
