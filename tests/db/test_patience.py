"""Waiting out a database outage: one backoff for the pipeline's store calls, the eraser and the
job writes."""

from __future__ import annotations

import asyncio

import pytest

from retrieval.backoff import patiently
from retrieval.errors import StoreUnavailable
from retrieval.indexing.submit import Submissions


class Database:
    """Down for its first ``outages`` calls."""

    def __init__(self, outages: int) -> None:
        self.outages = outages
        self.calls: list[object] = []
        self.called = asyncio.Event()

    async def __call__(self, *args, **options):
        self.calls.append((args, options))
        self.called.set()
        if self.outages:
            self.outages -= 1
            raise StoreUnavailable("database is locked")
        return "stored"


async def test_backs_off_doubling_up_to_the_ceiling_and_returns_the_answer():
    database = Database(outages=5)
    waits: list[float] = []

    def waiting(exc: StoreUnavailable, delay: float) -> None:
        assert str(exc) == "database is locked"
        waits.append(delay)

    answer = await patiently(database, waiting=waiting, first_s=0.001, max_s=0.004)
    assert answer == "stored"
    assert waits == [0.001, 0.002, 0.004, 0.004, 0.004]


async def test_gives_up_at_once_when_told():
    database = Database(outages=5)
    with pytest.raises(StoreUnavailable):
        await patiently(database, waiting=lambda exc, delay: None, give_up=lambda: True)
    assert len(database.calls) == 1


async def test_other_errors_are_not_waited_out():
    async def broken():
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        await patiently(broken, waiting=lambda exc, delay: None)


async def test_images_submitted_during_an_outage_are_queued_together_once_it_ends(
    monkeypatch, caplog
):
    monkeypatch.setattr("retrieval.backoff.FIRST_S", 0.01)
    database = Database(outages=2)

    class Jobs:
        enqueue = database

    submissions = Submissions(Jobs(), written=lambda: None)
    first = asyncio.create_task(submissions.write(["a", "b"], 0))
    await database.called.wait()
    # The first try failed; more comes in while it waits to try again.
    second = asyncio.create_task(submissions.write(["c"], 1))
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert len(database.calls) == 3
    assert database.calls[-1] == ((["a", "b", "c"],), {"priority": [0, 0, 1]})
    assert "database unavailable, cannot queue 2 images yet" in caplog.text
    assert "cannot queue 3 images yet" in caplog.text


async def test_a_refusal_is_raised_at_once_never_waited_out(monkeypatch):
    """The database refused the statement: trying it again as it was would never end."""
    monkeypatch.setattr("retrieval.backoff.FIRST_S", 0.001)
    calls = []

    async def refused():
        calls.append(1)
        if len(calls) == 1:
            raise StoreUnavailable("invalid byte sequence", refused="22021")
        return "stored"

    with pytest.raises(StoreUnavailable) as raised:
        await patiently(refused, waiting=lambda exc, delay: None)
    assert raised.value.refused == "22021" and len(calls) == 1
