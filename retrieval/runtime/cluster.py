"""The cluster as an operator sees it: the queue's depth and oldest job, and every process that
encodes images or reads their words, with its throughput.

Each consumer (a bot process that encodes, an encoder worker) reports itself every ~15 s in
``index_consumers`` (`ConsumerReport`), a row for each lane of the queue it takes; a row not
seen for ``STALE_S`` is a process that died: it is left out of the figures and deleted by the
next report. "Seen" and "waiting since" are the
database's clock (`retrieval/database/clock.py`): a process whose own clock is ahead must not take
the others for dead. `read_figures` reads everything in one transaction, from the jobs table's
``ix_index_jobs_age`` index and two small tables, so it stays cheap however large the backlog.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from retrieval.database.clock import moment
from retrieval.database.errors import database_errors
from retrieval.database.rows import record
from retrieval.database.tables import CLIP_LANE, OCR_LANE, IndexConsumer, IndexFailure, IndexJob

# A consumer reports every ~15 s; one silent this long has died (or lost the database).
STALE_S = 180.0
# Jobs per state are counted exactly up to this many, then shown as "at least": the count walks
# an index, and an exact count of millions would cost a scan of the table at every refresh.
COUNT_CAP = 100_000


@dataclass(frozen=True, slots=True)
class Consumer:
    """One live process's work in one lane, as it last reported: images encoded (the CLIP
    lane) or pictures read (the OCR lane, ``model_id`` the OCR model)."""

    key: str
    role: str
    host: str
    shards: str | None
    model_id: str
    device: str
    started_at: datetime
    seen_at: datetime
    images_stored: int
    rate: float  # images stored per second, lately
    in_hand: int
    problem: str | None = None  # why it is unhealthy; None while it is healthy
    lane: str = CLIP_LANE


@dataclass(frozen=True)
class ClusterFigures:
    """The queue and its consumers across every process on the database.

    ``waiting`` are jobs never tried yet, ``retrying`` jobs that failed before and wait for
    another try (the two make the queue's depth; each is exact up to ``COUNT_CAP``), ``claimed``
    the jobs live consumers hold now (part of the other two); ``consumers`` the processes that
    encode. The ``reading_`` figures and ``readers`` are the same for the OCR lane.
    """

    waiting: int = 0
    retrying: int = 0
    claimed: int = 0
    oldest_waiting_s: float | None = None  # age of the oldest job never tried, None when none
    consumers: list[Consumer] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)  # failed for good, by reason
    # The OCR lane's jobs (the figures above are the CLIP lane's), each exact up to COUNT_CAP.
    reading_waiting: int = 0
    reading_retrying: int = 0
    reading_claimed: int = 0
    readers: list[Consumer] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Images stored per second by all live consumers together."""
        return sum(consumer.rate for consumer in self.consumers)

    @property
    def reading_rate(self) -> float:
        """Pictures whose words were stored per second, by all live readers together."""
        return sum(reader.rate for reader in self.readers)

    @property
    def depth(self) -> int:
        return self.waiting + self.retrying

    @property
    def capped(self) -> bool:
        return COUNT_CAP in (self.waiting, self.retrying)


async def read_figures(
    engine: AsyncEngine, *, now: datetime | None = None, stale_s: float = STALE_S
) -> ClusterFigures:
    """The figures as of the database's clock (or of ``now``, a moment the caller chose)."""
    first_try = IndexJob.attempts == 0
    vectors, words = IndexJob.lane == CLIP_LANE, IndexJob.lane == OCR_LANE

    def capped_count(*where) -> object:
        rows = select(IndexJob.id).where(*where).limit(COUNT_CAP).subquery()
        return select(func.count()).select_from(rows).scalar_subquery()

    queue = select(
        capped_count(vectors, first_try),
        capped_count(vectors, IndexJob.attempts > 0),
        select(func.min(IndexJob.created_at)).where(vectors, first_try).scalar_subquery(),
        moment(now),
        capped_count(words, first_try),
        capped_count(words, IndexJob.attempts > 0),
    )
    alive = select(IndexConsumer).where(IndexConsumer.seen_at >= moment(now, after_s=-stale_s))
    failures = select(IndexFailure.reason, func.sum(IndexFailure.count)).group_by(
        IndexFailure.reason
    )
    with database_errors():
        async with engine.connect() as conn:
            waiting, retrying, oldest, now, reading, rereading = (await conn.execute(queue)).one()
            rows = [record(Consumer, row) for row in await conn.execute(alive)]
            failed = {reason: int(n) for reason, n in await conn.execute(failures)}
    rows.sort(key=lambda consumer: (consumer.role, consumer.host, consumer.started_at))
    consumers = [row for row in rows if row.lane == CLIP_LANE]
    readers = [row for row in rows if row.lane == OCR_LANE]
    return ClusterFigures(
        waiting=int(waiting),
        retrying=int(retrying),
        claimed=sum(consumer.in_hand for consumer in consumers),
        oldest_waiting_s=None if oldest is None else (now - oldest).total_seconds(),
        consumers=consumers,
        failed=failed,
        reading_waiting=int(reading),
        reading_retrying=int(rereading),
        reading_claimed=sum(reader.in_hand for reader in readers),
        readers=readers,
    )


class ConsumerReport:
    """This process's row in ``index_consumers`` for one ``lane``: call `report()` every ~15 s,
    `leave()` at a clean stop. ``stored`` and ``in_hand`` read the lane's counters; ``shards``
    says which gateway shards the process runs (None for a worker or an unsharded bot);
    ``problem`` why the process is unhealthy (None while it is healthy)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        role: str,
        lane: str = CLIP_LANE,
        model_id: str,
        device: str,
        stored: Callable[[], int],
        in_hand: Callable[[], int],
        shards: Callable[[], str | None] = lambda: None,
        problem: Callable[[], str | None] = lambda: None,
        stale_s: float = STALE_S,
    ) -> None:
        self.engine = engine
        self.host = socket.gethostname()[:255]
        # The random part: a restarted container often gets the same host name and pid.
        self.key = f"{self.host}:{os.getpid()}:{secrets.token_hex(4)}"[:200]
        self.role = role
        self.lane = lane
        self.model_id = model_id
        self.device = device
        self.stale_s = stale_s
        self._stored, self._in_hand, self._shards = stored, in_hand, shards
        self._problem = problem
        # (when, images stored) at the last report: this process's own seconds, as only their
        # difference counts.
        self._last: tuple[float, int] | None = None
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        self._upsert = _upsert(dialect.insert)

    def _rate(self, stored: int, at: float) -> float:
        last, self._last = self._last, (at, stored)
        if last is None or at <= last[0]:
            return 0.0
        return max(stored - last[1], 0) / (at - last[0])

    async def report(self, *, now: datetime | None = None) -> None:
        """Write this process's row, and delete the rows of consumers gone silent; as of the
        database's clock (or of ``now``, a moment the caller chose)."""
        stored = self._stored()
        row = {
            "key": self.key,
            "role": self.role,
            "host": self.host,
            "shards": (self._shards() or "")[:100] or None,
            "model_id": self.model_id[:200],
            "device": self.device[:32],
            # Kept from the first report on (see _upsert).
            "started_at": moment(now),
            "seen_at": moment(now),
            "images_stored": stored,
            "rate": self._rate(stored, time.monotonic() if now is None else now.timestamp()),
            "in_hand": self._in_hand(),
            "problem": (self._problem() or "")[:500] or None,
            "lane": self.lane,
        }
        stale = moment(now, after_s=-self.stale_s)
        with database_errors():
            async with self.engine.begin() as conn:
                await conn.execute(self._upsert.values(row))
                await conn.execute(delete(IndexConsumer).where(IndexConsumer.seen_at < stale))

    async def leave(self) -> None:
        """A clean stop: the row goes at once rather than after ``stale_s``."""
        with database_errors():
            async with self.engine.begin() as conn:
                await conn.execute(delete(IndexConsumer).where(IndexConsumer.key == self.key))


def _upsert(insert):
    stmt = insert(IndexConsumer)
    changing = ("shards", "seen_at", "images_stored", "rate", "in_hand", "problem")
    return stmt.on_conflict_do_update(
        index_elements=["key"], set_={name: stmt.excluded[name] for name in changing}
    )
