"""What both stores read with the same SQL: hit rows and the small look-ups around them.

A store subclasses `SharedReads` and gives `_reader()`: an async context manager yielding
a session or connection (anything with `execute`) whose database errors are already
`StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import re
import struct
from collections.abc import Collection, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    NotSupportedError,
    ProgrammingError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from retrieval.database.tables import IndexedImage
from retrieval.errors import StoreUnavailable
from retrieval.store import authors
from retrieval.store.base import SearchHit
from retrieval.store.deletes import routed

HIT_COLUMNS = (
    IndexedImage.id,
    IndexedImage.guild_id,
    IndexedImage.channel_id,
    IndexedImage.message_id,
    IndexedImage.image_key,
    IndexedImage.kind,
    IndexedImage.author_id,
    IndexedImage.posted_at,
    IndexedImage.filename,
    IndexedImage.source_url,
    IndexedImage.content_type,
    IndexedImage.content_hash,
)


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """Whatever the database or its driver raises becomes StoreUnavailable: an outage (the
    database is away or busy: wait, and keep the work), or a statement it refused, marked as
    such (``refused``: waiting will not cure it). Errors of neither kind pass unchanged."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        if (classified := database_error(exc)) is None:
            raise
        raise classified from exc


def database_error(exc: BaseException) -> StoreUnavailable | None:
    """The StoreUnavailable that ``exc`` stands for; None for an error of neither kind."""
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(f"no free database connection in time: {exc}")
    if (code := sqlstate(exc)) is not None:
        if code.startswith(_OUTAGE_CLASSES) or code == "55P03":
            return StoreUnavailable(f"database error: {exc}")
        return _refused(code, exc)
    if (name := _told(exc, "sqlite_errorname")) is not None:
        if name.startswith(_SQLITE_OUTAGES):
            return StoreUnavailable(f"database error: {exc}")
        return _refused(name, exc)
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        # A value SQLAlchemy could not hand to the driver (its type's processing refused it).
        if isinstance(exc.orig, ValueError | TypeError):
            return _refused(type(exc.orig).__name__, exc)
        return database_error(exc.orig) if exc.orig is not None else None
    if isinstance(exc, IntegrityError | DataError | ProgrammingError | NotSupportedError):
        return _refused(type(exc.orig or exc).__name__, exc)
    if isinstance(exc, DBAPIError | OSError):
        return StoreUnavailable(f"database error: {exc}")
    if isinstance(exc, UnicodeError | OverflowError | struct.error):
        # The driver could not encode a value of the row (text that is not UTF-8, an integer
        # out of range): the database never saw it, and never will. (Other errors raised in a
        # transaction are left as they are: a bug in the caller is no refusal.)
        return _refused(type(exc).__name__, exc)
    return None


def _refused(code: str, exc: BaseException) -> StoreUnavailable:
    # The driver's words, without the statement and its values SQLAlchemy adds: a refusal is
    # logged with the image it concerns, and a row's values can be long.
    said = str(getattr(exc, "orig", None) or exc)
    if len(said) > _SAID:
        said = said[:_SAID] + "…"
    where = f"SQLSTATE {code}" if _SQLSTATE.fullmatch(code) else code
    return StoreUnavailable(f"the database refused the statement ({where}): {said}", refused=code)


_SQLSTATE = re.compile("[0-9A-Z]{5}")
_SAID = 300


# SQLSTATE classes of a database that is away or busy rather than refusing: connection (08),
# rolled back by a deadlock or serialisation (40), resources (53), operator intervention such
# as a shutdown (57), system errors (58); and 55P03, a lock not available.
_OUTAGE_CLASSES = ("08", "40", "53", "57", "58")
# SQLite's result codes of a database that is busy, unreachable or damaged rather than refusing
# a statement (extended codes start with these).
_SQLITE_OUTAGES = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_CANTOPEN",
    "SQLITE_NOMEM",
    "SQLITE_INTERRUPT",
    "SQLITE_PROTOCOL",
    "SQLITE_READONLY",
    "SQLITE_CORRUPT",
    "SQLITE_NOTADB",
)


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL error code behind a driver error, if there is one (SQLite has none)."""
    return _told(exc, "sqlstate")


def _told(exc: BaseException, attribute: str) -> str | None:
    """What the first error in ``exc``'s chain that has ``attribute`` says there."""
    for candidate in _causes(exc):
        value = getattr(candidate, attribute, None)
        if isinstance(value, str) and value:
            return value
    return None


def _causes(exc: BaseException) -> tuple:
    # The error itself (asyncpg's, raised by a COPY on the driver's own connection), the
    # driver's behind SQLAlchemy's, and what that one wraps.
    return (
        exc,
        getattr(exc, "orig", None),
        exc.__cause__,
        getattr(exc.__cause__, "__cause__", None),
    )


def as_utc(moment: datetime) -> datetime:
    # SQLite hands datetimes back naive; they were written as UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def hit(row, score: float) -> SearchHit:
    """A row of HIT_COLUMNS as a result."""
    return SearchHit(
        row_id=row.id,
        score=score,
        guild_id=row.guild_id,
        channel_id=row.channel_id,
        message_id=row.message_id,
        image_key=row.image_key,
        kind=row.kind,
        author_id=row.author_id,
        posted_at=as_utc(row.posted_at),
        filename=row.filename,
        source_url=row.source_url,
        content_type=row.content_type,
        content_hash=row.content_hash,
    )


class SharedReads:
    def _reader(self) -> AbstractAsyncContextManager:
        raise NotImplementedError

    async def _rows(self, stmt) -> list:
        async with self._reader() as conn:
            return (await conn.execute(stmt)).all()

    async def _scalar(self, stmt):
        async with self._reader() as conn:
            return (await conn.execute(stmt)).scalar_one_or_none()

    async def known_keys(
        self, message_id: int, model_id: str | None = None, *, guild_id: int | None = None
    ) -> set[int]:
        stmt = select(IndexedImage.image_key).where(
            IndexedImage.message_id == message_id, *in_guild(guild_id)
        )
        if model_id is not None:
            stmt = stmt.where(IndexedImage.model_id == model_id)
        return {row.image_key for row in await self._rows(stmt)}

    async def embedding_for(
        self, content_hash: str, model_id: str, *, guild_id: int | None = None
    ) -> np.ndarray | None:
        stmt = (
            select(IndexedImage.embedding)
            .where(
                IndexedImage.content_hash == content_hash,
                IndexedImage.model_id == model_id,
                *in_guild(guild_id),
            )
            .limit(1)
        )
        return await self._scalar(stmt)

    async def embeddings_for(
        self, content_hashes: Collection[str], model_id: str
    ) -> dict[str, np.ndarray]:
        if not content_hashes:
            return {}
        stmt = select(IndexedImage.content_hash, IndexedImage.embedding).where(
            IndexedImage.content_hash.in_(list(content_hashes)),
            IndexedImage.model_id == model_id,
        )
        return {row.content_hash: row.embedding for row in await self._rows(stmt)}

    async def message_vectors(
        self, message_id: int, model_id: str, *, guild_id: int | None = None
    ) -> dict[int, np.ndarray]:
        stmt = select(IndexedImage.image_key, IndexedImage.embedding).where(
            IndexedImage.message_id == message_id,
            IndexedImage.model_id == model_id,
            *in_guild(guild_id),
        )
        return {row.image_key: row.embedding for row in await self._rows(stmt)}

    async def model_counts(self, *, other_than: str | None = None) -> dict[str, int]:
        # Model by model through ix_images_model: the next model id above the last (a handful
        # of index probes), then a count of each model's entries. Leaving the configured model
        # out (``other_than``) leaves out nearly every row, where one GROUP BY would read them
        # all. Statements, not a recursive query: Citus runs these on every node, not that.
        models: list[str] = []
        while True:
            after = select(func.min(IndexedImage.model_id))
            if models:
                after = after.where(IndexedImage.model_id > models[-1])
            if (model := await self._scalar(after)) is None:
                break
            models.append(model)
        counts = {}
        for model in models:
            if model == other_than:
                continue
            stmt = select(func.count()).select_from(IndexedImage)
            counts[model] = int(await self._scalar(stmt.where(IndexedImage.model_id == model)))
        return counts

    async def count(
        self,
        *,
        guild_id: int,
        model_id: str | None = None,
        channel_ids: Collection[int] | None = None,
    ) -> int:
        stmt = (
            select(func.count()).select_from(IndexedImage).where(IndexedImage.guild_id == guild_id)
        )
        if model_id is not None:
            stmt = stmt.where(IndexedImage.model_id == model_id)
        if channel_ids is not None:
            stmt = stmt.where(IndexedImage.channel_id.in_(sorted(channel_ids)))
        return int(await self._scalar(stmt))

    async def author_guild_ids(self, author_id: int) -> list[int]:
        """The servers where ``author_id`` may have images stored (see authors.py)."""
        return sorted(row.guild_id for row in await self._rows(authors.guilds_of(author_id)))

    async def count_author(self, *, author_id: int, guild_id: int | None = None) -> int:
        guilds = [guild_id] if guild_id is not None else await self.author_guild_ids(author_id)
        if not guilds:
            return 0
        # Only the member's servers, through (guild_id, author_id): on Citus, only their shards.
        stmt = (
            select(func.count())
            .select_from(IndexedImage)
            .where(IndexedImage.guild_id.in_(guilds), IndexedImage.author_id == author_id)
        )
        return int(await self._scalar(stmt))

    async def channel_ids(self, *, guild_id: int) -> set[int]:
        stmt = select(IndexedImage.channel_id).where(IndexedImage.guild_id == guild_id).distinct()
        return {row.channel_id for row in await self._rows(stmt)}

    async def guild_ids(self) -> set[int]:
        return {row.guild_id for row in await self._rows(authors.every_guild())}


def in_guild(guild_id: int | None) -> list:
    """The condition that routes a statement to one server's rows, when the caller knows it:
    on Citus it decides which machine answers; elsewhere it is one more indexed column."""
    return routed(IndexedImage, guild_id)
