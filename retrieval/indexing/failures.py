"""What an image that fails for good leaves behind: a count per server and reason
(`index_failures`, what `/clipfind status` and the metrics show), and, where it would fail the
same way however often it was tried, its ids (`failed_images`), which the enqueue's statement
asks so that it is not queued, downloaded or counted again (`jobs._guarded_enqueue`)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from retrieval.database.clock import db_now
from retrieval.database.tables import CLIP_LANE, FailedImage, IndexFailure, IndexJob
from retrieval.indexing.inputs import INVALID_TIME, INVALID_URL, valid_id

if TYPE_CHECKING:
    from retrieval.indexing.jobs import ImageRef

log = logging.getLogger(__name__)

# What an image failed for good is found by: its key, and what deletions look for.
_FAILED_COLUMNS = ("guild_id", "message_id", "image_key", "channel_id", "parent_id", "author_id")


async def fail_jobs(
    conn: AsyncConnection, job_ids: Collection[int], *, reason: str, lane: str, lasting: bool
) -> None:
    """Delete the jobs and count them per server; ``lasting``: keep their images' ids too."""
    gone = (
        await conn.execute(
            delete(IndexJob)
            .where(IndexJob.id.in_(list(job_ids)))
            .returning(*(getattr(IndexJob, name) for name in _FAILED_COLUMNS))
        )
    ).all()
    if lasting and gone:
        marks = [dict(row._mapping, lane=lane, reason=reason) for row in gone]
        await conn.execute(_remember(conn), marks)
    await _count(conn, Counter((row.guild_id, reason) for row in gone))


async def not_queued(conn: AsyncConnection, failed: Sequence[tuple[ImageRef, str, str]]) -> None:
    """Count and log each image that could not be queued (the image, the reason, what went
    wrong). One that cannot be stored as it is, whose ids are valid (a link that does not
    parse, a date out of range), is kept and counted the first time only: its message comes
    again with every edit."""
    counts: Counter[tuple[int, str]] = Counter()
    for ref, reason, why in failed:
        if reason in (INVALID_TIME, INVALID_URL) and not await _first_failure(conn, ref, reason):
            continue
        where = f"{ref.filename!r} of message {ref.message_id} (guild {ref.guild_id})"
        log.warning("not queued: image %s: %s: %s", where, reason, why)
        if valid_id(ref.guild_id):  # else no server to count it for: only the log says it
            counts[ref.guild_id, reason] += 1
    await _count(conn, counts)


async def _first_failure(conn: AsyncConnection, ref: ImageRef, reason: str) -> bool:
    """Keep that the image failed for good; False when it was kept before."""
    values = {name: getattr(ref, name) for name in _FAILED_COLUMNS}
    stmt = _remember(conn).returning(FailedImage.message_id)
    kept = await conn.execute(stmt, values | {"lane": CLIP_LANE, "reason": reason})
    return kept.first() is not None


def _remember(conn: AsyncConnection):
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    values = {name: bindparam(name) for name in (*_FAILED_COLUMNS, "lane", "reason")}
    stmt = dialect.insert(FailedImage).values(**values, failed_at=db_now())
    return stmt.on_conflict_do_nothing(
        index_elements=["guild_id", "message_id", "image_key", "lane"]
    )


async def _count(conn: AsyncConnection, counts: Counter[tuple[int, str]]) -> None:
    if not counts:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(IndexFailure).values(
        guild_id=bindparam("guild_id"),
        reason=bindparam("reason"),
        count=bindparam("n"),
        last_at=db_now(),
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["guild_id", "reason"],
        set_={
            "count": IndexFailure.count + stmt.excluded["count"],
            "last_at": stmt.excluded["last_at"],
        },
    )
    for (guild_id, reason), n in counts.items():
        await conn.execute(stmt, {"guild_id": guild_id, "reason": reason, "n": n})
