"""Turning reading on and off (the ``OCR`` setting), applied at each start.

On: the images stored before reading was on (or while it was off) get a reading job each, at the
lowest priority, once; ``bot_state`` remembers that it was done, and the statements are idempotent
(an image already queued or read is left out), so two processes starting together only repeat
each other's work. Off: nothing is read from then on (no reading is queued, none is claimed), and
at the first start with it off every word stored is deleted, with the readings still queued.
"""

from __future__ import annotations

import functools
import logging

from sqlalchemy import delete, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from retrieval.backoff import patiently
from retrieval.database.clock import db_now
from retrieval.database.errors import database_errors
from retrieval.database.state import get_state, set_state
from retrieval.database.tables import OCR_LANE, IndexedImage, IndexJob
from retrieval.errors import StoreUnavailable
from retrieval.indexing.jobs import OLDEST
from retrieval.store.allowed import stored_permitted
from retrieval.store.base import VectorStore

log = logging.getLogger(__name__)

READING_KEY = "reading"  # bot_state: "on" or "off", as last applied
BATCH = 2_000  # images looked at per statement

# The job's columns, from the image's row (its stable link: refreshed before the download).
_FROM_IMAGE = {
    "guild_id": IndexedImage.guild_id,
    "channel_id": IndexedImage.channel_id,
    "parent_id": IndexedImage.parent_id,
    "message_id": IndexedImage.message_id,
    "image_key": IndexedImage.image_key,
    "kind": IndexedImage.kind,
    "author_id": IndexedImage.author_id,
    "posted_at": IndexedImage.posted_at,
    "url": IndexedImage.source_url,
    "source_url": IndexedImage.source_url,
    "filename": IndexedImage.filename,
    "content_type": IndexedImage.content_type,
}


async def apply_reading(*, on: bool, engine: AsyncEngine, store: VectorStore) -> None:
    """Make the database agree with the setting (see the module's notes), waiting out a
    database that is away: an outage is not the task's failure (a worker restarted while
    PostgreSQL restarted was reported unhealthy for it)."""

    def waiting(exc: StoreUnavailable, delay: float) -> None:
        log.warning("cannot apply OCR=%s yet, trying again in %.1fs: %s", on, delay, exc)

    await patiently(
        functools.partial(_apply_reading, on=on, engine=engine, store=store), waiting=waiting
    )


async def _apply_reading(*, on: bool, engine: AsyncEngine, store: VectorStore) -> None:
    with database_errors():
        state = await get_state(engine, READING_KEY)
    wanted = "on" if on else "off"
    if state == wanted:
        return
    if on:
        queued = await queue_unread(engine)
        log.info("reading is on: %d images stored before were queued to be read", queued)
    else:
        dropped = await forget_reading(engine, store)
        log.info("reading is off: the words of %d images were deleted", dropped)
    with database_errors():
        await set_state(engine, READING_KEY, wanted)


async def queue_unread(engine: AsyncEngine, *, batch: int = BATCH) -> int:
    """A reading job for every stored image not read yet, at the lowest priority; returns how
    many were queued. Walks the table by id, a batch per transaction."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    columns = [*_FROM_IMAGE, "priority", "attempts", "retry_at", "created_at", "lane"]
    queued, after = 0, 0
    while True:
        with database_errors():
            async with engine.begin() as conn:
                ids = list(
                    await conn.scalars(
                        select(IndexedImage.id)
                        .where(IndexedImage.id > after)
                        .order_by(IndexedImage.id)
                        .limit(batch)
                    )
                )
                if not ids:
                    return queued
                unread = select(
                    *_FROM_IMAGE.values(),
                    literal(OLDEST),
                    literal(0),
                    db_now(),
                    db_now(),
                    literal(OCR_LANE),
                ).where(
                    # The batch as a range of the primary key, not a list of ids to look up.
                    IndexedImage.id > after,
                    IndexedImage.id <= ids[-1],
                    IndexedImage.words.is_(None),
                    stored_permitted(),
                )
                stmt = dialect.insert(IndexJob).from_select(columns, unread)
                stmt = stmt.on_conflict_do_nothing(
                    index_elements=["message_id", "image_key", "lane"]
                )
                queued += max((await conn.execute(stmt)).rowcount, 0)
        after = ids[-1]


async def forget_reading(engine: AsyncEngine, store: VectorStore) -> int:
    """Every reading queued, and every word stored, server by server; returns the images whose
    words were deleted."""
    with database_errors():
        async with engine.begin() as conn:
            await conn.execute(delete(IndexJob).where(IndexJob.lane == OCR_LANE))
    dropped = 0
    for guild_id in sorted(await store.guild_ids()):
        dropped += await store.forget_words(guild_id=guild_id)
    return dropped


__all__ = ["READING_KEY", "apply_reading", "forget_reading", "queue_unread"]
