"""Times that processes compare come from the database's clock: a process whose own clock is ten
minutes ahead or behind queues live posts others claim at once, steals no claim, deletes no
other process's heartbeat, and dates a departure as the others do. On both databases.

The skewed process is this one with its clock moved: every ``datetime.now()`` of the product's
modules is shifted while it acts (see `process_clock`), the database's clock is not.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from retrieval.database.clock import database_now
from retrieval.database.engine import create_engine
from retrieval.database.tables import IndexConsumer
from retrieval.indexing.jobs import JobQueue
from retrieval.policy.departures import Departures
from retrieval.runtime.cluster import ConsumerReport, read_figures
from tests.db.test_jobs import ref
from tests.records import MODEL

SKEWS = [timedelta(minutes=10), timedelta(minutes=-10)]
LEASE_S = 300.0  # JOB_LEASE_S's default: shorter than the skew either way


@contextlib.contextmanager
def process_clock(offset: timedelta) -> Iterator[None]:
    """This process's clock ``offset`` away from the true time, for every module of the bot and
    of retrieval/ that reads it through ``datetime.now()``."""
    true = datetime

    class Skewed(datetime):
        @classmethod
        def now(cls, tz=None):
            return true.now(tz) + offset

    modules = [
        module
        for name, module in list(sys.modules.items())
        if name.partition(".")[0] in ("retrieval", "bot") and vars(module).get("datetime") is true
    ]
    for module in modules:
        module.datetime = Skewed
    try:
        yield
    finally:
        for module in modules:
            module.datetime = true


@pytest.fixture
async def other_engine(store_engine):
    """A second engine on the same database: another process sharing it."""
    engine = create_engine(store_engine.url.render_as_string(hide_password=False))
    yield engine
    await engine.dispose()


@pytest.fixture(params=SKEWS, ids=["ahead", "behind"])
def skew(request) -> timedelta:
    return request.param


async def test_live_posts_queued_by_a_skewed_gateway_are_claimed_at_once(
    store_engine, other_engine, skew
):
    gateway = JobQueue(store_engine, model_id=MODEL, lease_s=LEASE_S)
    worker = JobQueue(other_engine, model_id=MODEL, lease_s=LEASE_S)
    with process_clock(skew):
        await gateway.enqueue([ref(1), ref(2)])
    assert sorted(job.ref.image_key for job in await worker.claim(10)) == [1, 2]
    await worker.release()
    # And the queue's age is the true one, not the skew.
    figures = await read_figures(other_engine)
    assert 0 <= figures.oldest_waiting_s < 60


async def test_no_claim_is_stolen_across_skewed_clocks(store_engine, other_engine, skew):
    honest = JobQueue(store_engine, model_id=MODEL, lease_s=LEASE_S)
    skewed = JobQueue(other_engine, model_id=MODEL, lease_s=LEASE_S)
    await honest.enqueue([ref(1), ref(2)])

    (held,) = await honest.claim(1)
    with process_clock(skew):
        (taken,) = await skewed.claim(10)  # the other row, at once: it is due
        assert taken.id != held.id
        await skewed.renew([taken.id])
        assert await skewed.claim(10) == []  # not the honest process's claim
    assert await honest.claim(10) == []  # nor the skewed one's

    # A retry set by the skewed process comes due by the database's clock too.
    with process_clock(skew):
        delay = await skewed.retry(taken, reason="http_503", error="HTTP 503")
    assert delay is not None and delay < 60
    assert await honest.due(10) == 0  # waiting out its delay, not ten minutes more or less
    assert (await honest.backlog()).retrying == 1


async def test_no_heartbeat_is_deleted_by_a_skewed_process(store_engine, other_engine, skew):
    def report(engine, role: str) -> ConsumerReport:
        return ConsumerReport(
            engine, role=role, model_id=MODEL, device="cpu", stored=lambda: 0, in_hand=lambda: 0
        )

    honest, skewed = report(store_engine, "bot"), report(other_engine, "worker")
    await honest.report()
    with process_clock(skew):
        await skewed.report()  # ahead, it used to take the honest one for long dead
    await honest.report()  # and the honest one the skewed one, when it was behind
    async with store_engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(IndexConsumer)) == 2
    with process_clock(skew):
        seen = await read_figures(other_engine)
    assert sorted(consumer.role for consumer in seen.consumers) == ["bot", "worker"]
    assert sorted(consumer.role for consumer in (await read_figures(store_engine)).consumers) == [
        "bot",
        "worker",
    ]


async def test_a_departure_is_dated_by_the_database(store_engine, skew):
    departures = Departures(store_engine)
    with process_clock(skew):
        await departures.record(5)
    left_at = (await departures.pending())[5]
    assert abs(left_at - await database_now(store_engine)) < timedelta(minutes=1)


def test_the_skew_reaches_the_modules_that_read_the_clock():
    """The harness itself: what the product reads while it is on is the moved clock."""
    import retrieval.policy.departures

    with process_clock(timedelta(hours=-5)):
        moved = retrieval.policy.departures.datetime.now(UTC)
    assert datetime.now(UTC) - moved > timedelta(hours=4)
