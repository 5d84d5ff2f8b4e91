"""The durable indexing queue: every image to index is a row in `index_jobs` first.

A row is written before anything depends on it (a backfill cursor moves past a message only once
its images are rows), claimed for a lease by a consumer, and deleted in the same transaction that
stores its vector (see the stores' ``upsert(..., job_ids=...)``), or when it fails for good, which
leaves a count per server and reason behind, and where it would fail the same again (no picture,
too large, refused by Discord) the image's ids in `failed_images`, so that it is not queued
again. Transient failures move ``retry_at`` into the future with exponential backoff and jitter,
honouring Retry-After, for as long as ``RetryPolicy.give_up_after_s``. Deleting a message,
channel, server or member's images deletes their rows in the same transaction as their vectors
(the stores do both).

Claims are leases: a consumer that dies just lets them run out, and on PostgreSQL several
consumers claim side by side with ``FOR UPDATE SKIP LOCKED``. Leases, retry times and queue ages
are the database's clock (`retrieval/database/clock.py`), whichever process writes or reads them.
Enqueueing is guarded like a store write (`retrieval/store/allowed.py`), and skips images the
current model has already encoded.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, bindparam, delete, exists, func, literal, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import aliased

from retrieval.database.clock import db_now
from retrieval.database.errors import database_errors
from retrieval.database.refusals import isolating, refusal_reason
from retrieval.database.rows import record
from retrieval.database.tables import (
    CLIP_LANE,
    OCR_LANE,
    FailedImage,
    IndexedImage,
    IndexFailure,
    IndexJob,
)
from retrieval.indexing.failures import fail_jobs, not_queued
from retrieval.indexing.inputs import clean_ref, clean_text, ref_problem
from retrieval.store.allowed import known_parent, permitted

# PostgreSQL's notification channel for "jobs were queued".
JOBS_CHANNEL = "clipfind_jobs"
LIVE, HISTORY = 0, 1  # priorities: live posts are claimed before backfill and re-indexing
# The words of images stored before reading was on: after everything else.
OLDEST = 2
_REF_COLUMNS = (
    "guild_id",
    "channel_id",
    "parent_id",
    "message_id",
    "image_key",
    "kind",
    "author_id",
    "posted_at",
    "url",
    "source_url",
    "filename",
    "content_type",
    "size",
    "proxy_url",
    "width",
    "height",
)


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image to index, as the Discord adapter found it."""

    guild_id: int
    channel_id: int
    message_id: int
    image_key: int
    kind: str  # "attachment" | "embed"
    author_id: int
    posted_at: datetime
    url: str  # what to download (may be signed and short-lived)
    source_url: str  # what to keep (stable)
    filename: str
    content_type: str = ""
    size: int | None = None
    parent_id: int | None = None  # the channel of a thread, for policies that cover threads
    # Discord's media proxy copy of the picture and the picture's size, as the message gives
    # them: what a smaller copy is asked for with (retrieval/pictures/media_proxy.py). None for
    # images queued before revision 0014 and for previews without them: the URL is downloaded.
    proxy_url: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: ``first_s``, doubling up to ``max_s``, for at most
    ``give_up_after_s`` after the image was first queued."""

    first_s: float = 30.0
    max_s: float = 3600.0
    give_up_after_s: float = 48 * 3600.0

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        ceiling = min(self.max_s, self.first_s * 2 ** max(attempts - 1, 0))
        # "Equal jitter": spread a wave of failures out, never sooner than half the backoff.
        wait = ceiling / 2 + random.random() * ceiling / 2
        return max(wait, retry_after or 0.0)


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed row: the image, and how often it was tried before."""

    id: int
    ref: ImageRef
    attempts: int


@dataclass
class Backlog:
    """One server's (or every server's) queue: waiting, retrying, failed for good by reason."""

    waiting: int = 0
    retrying: int = 0
    failed: dict[str, int] = field(default_factory=dict)


class JobQueue:
    """One lane of the queue (``lane``): what it claims, counts and fails. The CLIP lane's
    `enqueue` also queues each image's reading (the OCR lane) when ``read_words``; `for_lane`
    gives the other lane's view of the same table. ``model_id`` is the CLIP model the queued
    images are encoded with; None in a process without one (a worker that only reads), which
    takes jobs and queues none."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        model_id: str | None,
        lease_s: float = 300.0,
        retry: RetryPolicy | None = None,
        lane: str = CLIP_LANE,
        read_words: bool = False,
    ) -> None:
        self.engine = engine
        self.model_id = model_id
        self.lease_s = lease_s
        self.retry_policy = retry or RetryPolicy()
        self.lane = lane
        self.read_words = read_words
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        self._insert = _guarded_enqueue(dialect.insert, lane=CLIP_LANE)
        self._insert_reading = _guarded_enqueue(dialect.insert, lane=OCR_LANE)

    def for_lane(self, lane: str) -> JobQueue:
        """The same queue, seen from ``lane``."""
        return JobQueue(
            self.engine,
            model_id=self.model_id,
            lease_s=self.lease_s,
            retry=self.retry_policy,
            lane=lane,
            read_words=self.read_words,
        )

    def _in_lane(self) -> list:
        return [IndexJob.lane == self.lane]

    def _reason(self, reason: str) -> str:
        """A failure's reason as counted: the OCR lane's carry its name (``ocr_not_an_image``)."""
        return reason if self.lane == CLIP_LANE else f"{self.lane}_{reason}"[:40]

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        with database_errors():
            async with self.engine.begin() as conn:
                yield conn

    async def enqueue(
        self, refs: Sequence[ImageRef], *, priority: int | Sequence[int] = LIVE
    ) -> None:
        """Queue images (``priority`` for all, or one per image), in one transaction unless the
        database refuses a row. Those already queued, already encoded by the current model, or
        refused by the policy tables are left out by the statement itself.

        Text is cleaned first (retrieval/indexing/inputs.py). An image that cannot be stored as it
        is (an id out of range, a link that does not parse), or whose row the database refuses
        (retrieval/database/refusals.py), is counted as failed for good, and the others are
        queued."""
        if not refs:
            return
        if self.model_id is None:
            raise RuntimeError("a queue without a CLIP model takes jobs and queues none")
        priorities = [priority] * len(refs) if isinstance(priority, int) else list(priority)
        rows: list[tuple[ImageRef, dict]] = []
        failed: list[tuple[ImageRef, str, str]] = []  # the image, the reason, what went wrong
        for ref, rank in zip(refs, priorities, strict=True):
            ref = clean_ref(ref)
            if (problem := ref_problem(ref)) is not None:
                failed.append((ref, problem, "it cannot be stored as it is"))
                continue
            values = {name: getattr(ref, name) for name in _REF_COLUMNS}
            values["priority"] = rank
            rows.append((ref, values | {"model_id": self.model_id}))
        _, refused = await isolating(rows, self._insert_rows)
        failed += [(ref, refusal_reason(exc), str(exc)) for (ref, _), exc in refused]
        if failed:
            await self._count_not_queued(failed)

    async def _insert_rows(self, rows: Sequence[tuple[ImageRef, dict]]) -> None:
        async with self._transaction() as conn:
            await conn.execute(self._insert, [values for _, values in rows])
            if self.read_words:  # and its reading, claimed once no vector waits
                await conn.execute(self._insert_reading, [values for _, values in rows])
            if conn.dialect.name == "postgresql":
                # Sent at commit: consumers in other processes look at once, not at their next
                # poll (see bot/worker.py).
                await conn.execute(text(f"NOTIFY {JOBS_CHANNEL}"))

    async def _count_not_queued(self, failed: Sequence[tuple[ImageRef, str, str]]) -> None:
        async with self._transaction() as conn:
            await not_queued(conn, failed)

    async def claim(self, limit: int) -> list[Job]:
        """Up to ``limit`` due rows, oldest first within a priority, leased to this consumer."""
        if limit <= 0:
            return []
        due = (
            select(IndexJob.id)
            .where(*self._in_lane(), *_claimable(), *self._after_vector())
            .order_by(IndexJob.priority, IndexJob.retry_at, IndexJob.id)
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL: consumers never wait on each other
        )
        stmt = (
            update(IndexJob)
            .where(IndexJob.id.in_(due.scalar_subquery()))
            .values(claimed_until=db_now(self.lease_s))
            .returning(IndexJob)
        )
        async with self._transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        # RETURNING keeps no order: put it back.
        rows.sort(key=lambda row: (row.priority, row.retry_at, row.id))
        return [Job(row.id, _ref(row), row.attempts) for row in rows]

    def _after_vector(self) -> list:
        """A reading waits for its image's vector: the words are kept in the image's row,
        which its CLIP job makes (or, failing for good, never makes)."""
        if self.lane == CLIP_LANE:
            return []
        vector = aliased(IndexJob)
        return [
            ~exists().where(
                vector.message_id == IndexJob.message_id,
                vector.image_key == IndexJob.image_key,
                vector.lane == CLIP_LANE,
            )
        ]

    async def renew(self, job_ids: Collection[int]) -> None:
        """Extend the lease of rows still being worked on."""
        if not job_ids:
            return
        until = db_now(self.lease_s)
        async with self._transaction() as conn:
            await conn.execute(
                update(IndexJob).where(IndexJob.id.in_(list(job_ids))).values(claimed_until=until)
            )

    async def release(self, job_ids: Collection[int] | None = None) -> int:
        """Hand rows back unfinished (shutdown), so the next consumer takes them at once; None
        releases every claim (a single process starting: claims can only be a dead one's)."""
        stmt = update(IndexJob).values(claimed_until=None)
        if job_ids is not None:
            if not job_ids:
                return 0
            stmt = stmt.where(IndexJob.id.in_(list(job_ids)))
        else:
            stmt = stmt.where(IndexJob.claimed_until.is_not(None))
        async with self._transaction() as conn:
            return (await conn.execute(stmt)).rowcount

    async def set_urls(self, urls: dict[int, str]) -> None:
        """Keep fresh download URLs (job id -> URL), so later attempts use them too."""
        if not urls:
            return
        stmt = (
            update(IndexJob)
            .where(IndexJob.id == bindparam("job_id"))
            .values(url=bindparam("fresh_url"))
        )
        rows = [{"job_id": job_id, "fresh_url": url} for job_id, url in urls.items()]
        async with self._transaction() as conn:
            await conn.execute(stmt, rows)

    async def done(self, job_ids: Collection[int]) -> None:
        """Rows whose image needs nothing more (already stored, or no longer wanted)."""
        if not job_ids:
            return
        async with self._transaction() as conn:
            await conn.execute(delete(IndexJob).where(IndexJob.id.in_(list(job_ids))))

    async def retry(
        self, job: Job, *, reason: str, error: str, retry_after: float | None = None
    ) -> float | None:
        """A transient failure: try again later. Returns the delay, or None when the image has
        been failing for too long and was given up (counted as failed for good)."""
        async with self._transaction() as conn:
            row = (
                await conn.execute(
                    select(IndexJob.created_at, db_now()).where(IndexJob.id == job.id)
                )
            ).first()
            if row is None:  # deleted meanwhile (message deleted, opt-out...)
                return None
            created, now = row
            delay = self.retry_policy.delay(job.attempts + 1, retry_after)
            if (now - created).total_seconds() + delay > self.retry_policy.give_up_after_s:
                await self._fail(conn, [job], f"gave_up_{reason}")
                return None
            await conn.execute(
                update(IndexJob)
                .where(IndexJob.id == job.id)
                .values(
                    attempts=IndexJob.attempts + 1,
                    retry_at=db_now(delay),
                    claimed_until=None,
                    last_error=clean_text(f"{reason}: {error}", limit=200),
                )
            )
        return delay

    async def fail(self, jobs: Sequence[Job], reason: str, *, lasting: bool = False) -> None:
        """A permanent failure (not an image, too large, gone from Discord): the rows go, a
        count per server and reason stays. ``lasting``: the image would fail the same way
        however often it was tried, and queueing it again is refused from now on."""
        if jobs:
            async with self._transaction() as conn:
                await self._fail(conn, jobs, reason, lasting=lasting)

    async def _fail(
        self, conn: AsyncConnection, jobs: Sequence[Job], reason: str, *, lasting: bool = False
    ) -> None:
        reason = self._reason(reason)[:40]
        ids = [job.id for job in jobs]
        await fail_jobs(conn, ids, reason=reason, lane=self.lane, lasting=lasting)

    async def backlog(self, guild_id: int | None = None) -> Backlog:
        where = self._in_lane() + ([] if guild_id is None else [IndexJob.guild_id == guild_id])
        retrying = IndexJob.attempts > 0
        async with self._transaction() as conn:
            row = (
                await conn.execute(
                    select(func.count().filter(~retrying), func.count().filter(retrying)).where(
                        *where
                    )
                )
            ).one()
            failures = select(IndexFailure.reason, func.sum(IndexFailure.count)).group_by(
                IndexFailure.reason
            )
            if guild_id is not None:
                failures = failures.where(IndexFailure.guild_id == guild_id)
            failed = {
                reason: int(n)
                for reason, n in await conn.execute(failures)
                if _lane_of(reason) == self.lane
            }
        return Backlog(int(row[0]), int(row[1]), failed)

    async def due(self, at_most: int) -> int:
        """How many rows could be claimed now, counting no further than ``at_most``."""
        where = [*self._in_lane(), *_claimable(), *self._after_vector()]
        capped = select(IndexJob.id).where(*where).limit(at_most).subquery()
        async with self._transaction() as conn:
            return int(await conn.scalar(select(func.count()).select_from(capped)))

    async def unfinished(self, at_most: int) -> int:
        """How many due rows wait or are being worked on by any consumer, counting no further
        than ``at_most`` (rows only claimed when due, so a claimed row is a due one)."""
        due = [*self._in_lane(), IndexJob.retry_at <= db_now()]
        capped = select(IndexJob.id).where(*due).limit(at_most).subquery()
        async with self._transaction() as conn:
            return int(await conn.scalar(select(func.count()).select_from(capped)))

    async def retrying(self) -> int:
        """Rows waiting for a retry after a transient failure, in every server."""
        async with self._transaction() as conn:
            stmt = (
                select(func.count())
                .select_from(IndexJob)
                .where(*self._in_lane(), IndexJob.attempts > 0)
            )
            return int(await conn.scalar(stmt))

    async def waiting(self, *, at_most: int) -> int:
        """How many rows are queued, counting no further than ``at_most`` (cheap on any size)."""
        capped = select(IndexJob.id).where(*self._in_lane()).limit(at_most).subquery()
        async with self._transaction() as conn:
            return int(await conn.scalar(select(func.count()).select_from(capped)))


def _lane_of(reason: str) -> str:
    """The lane whose failure a counted reason is (see `JobQueue._reason`)."""
    return OCR_LANE if reason.startswith(f"{OCR_LANE}_") else CLIP_LANE


def _claimable() -> list:
    """Rows due (``retry_at`` passed) and not leased, or leased by a consumer that let go, by
    the database's clock: the writer's and the claimer's own clocks may disagree. Not rows of
    a thread whose channel is unknown (queued before revision 0012): their write would be
    refused; they wait until the bot records the parent."""
    now = db_now()
    return [
        IndexJob.retry_at <= now,
        or_(IndexJob.claimed_until.is_(None), IndexJob.claimed_until < now),
        known_parent(IndexJob.parent_id),
    ]


def _guarded_enqueue(insert, *, lane: str):
    """INSERT ... SELECT one row per image for ``lane``, unless the policy refuses it, the
    work is done already (the current model has its vector; its words were read) or failed for
    good where it would fail again (`FailedImage`); an image already queued in the lane keeps
    its row. On PostgreSQL an enqueue whose snapshot predates a failure's commit may queue that
    image once more: one more try, which ends the same way."""
    job = IndexJob.__table__
    values = {name: bindparam(name, type_=job.c[name].type) for name in _REF_COLUMNS}
    stored = [
        IndexedImage.message_id == values["message_id"],
        IndexedImage.image_key == values["image_key"],
        # The images table's key, and on Citus the one machine holding the guild's rows.
        IndexedImage.guild_id == values["guild_id"],
    ]
    if lane == CLIP_LANE:
        model = bindparam("model_id", type_=IndexedImage.__table__.c.model_id.type)
        stored.append(IndexedImage.model_id == model)
    else:
        stored.append(IndexedImage.words.is_not(None))
    done = exists().where(and_(*stored))
    failed = [
        FailedImage.guild_id == values["guild_id"],
        FailedImage.message_id == values["message_id"],
        FailedImage.image_key == values["image_key"],
    ]
    if lane == CLIP_LANE:  # a reading of a picture whose vector failed for good would fail too
        failed.append(FailedImage.lane == CLIP_LANE)
    columns = [*_REF_COLUMNS, "priority", "attempts", "retry_at", "created_at", "lane"]
    chosen = select(
        *values.values(),
        bindparam("priority", type_=job.c.priority.type),
        0,
        db_now(),
        db_now(),
        literal(lane),
    ).where(
        permitted(values["author_id"], values["channel_id"], values["parent_id"]),
        ~done,
        ~exists().where(*failed),
    )
    stmt = insert(IndexJob).from_select(columns, chosen)
    return stmt.on_conflict_do_nothing(index_elements=["message_id", "image_key", "lane"])


def _ref(row) -> ImageRef:
    return record(ImageRef, row)
