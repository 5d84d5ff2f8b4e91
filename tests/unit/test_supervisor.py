"""The supervisor of long-lived tasks, on an injected clock: a failing task is logged, counted and
restarted with backoff; one that keeps failing makes the process unhealthy until it runs again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from retrieval.supervisor import Backoff, Supervisor, settle, within


class Clock:
    """Time that moves only when a task sleeps or the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Flaky:
    """A task body that fails ``times`` times, then runs until released; ``runs`` counts its
    starts and ``ran_for`` is how long each failing run lasts on the clock."""

    def __init__(self, clock: Clock, *, times: int, ran_for: float = 0.0) -> None:
        self.clock = clock
        self.times = times
        self.ran_for = ran_for
        self.runs = 0
        self.up = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self) -> None:
        self.runs += 1
        if self.runs <= self.times:
            self.clock.now += self.ran_for
            raise RuntimeError("broken pipe" if self.runs <= 2 else "connection reset")
        self.up.set()
        await self.release.wait()


def supervisor(clock: Clock, **options) -> Supervisor:
    return Supervisor(
        backoff=Backoff(first_s=1.0, max_s=8.0), clock=clock, sleep=clock.sleep, **options
    )


async def test_a_failing_task_is_restarted_with_doubling_backoff_and_counted(caplog):
    clock = Clock()
    tasks = supervisor(clock)
    body = Flaky(clock, times=5)
    with caplog.at_level(logging.ERROR, logger="retrieval.supervisor"):
        task = tasks.start("feed", body)
        await asyncio.wait_for(body.up.wait(), 5)
    assert clock.slept == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert tasks.restarts == {"feed": 5}
    assert tasks.running("feed") and not tasks.running("batch")
    # Each distinct error once with its traceback; a repeat of the one before is one line.
    failures = [r for r in caplog.records if r.name == "retrieval.supervisor"]
    traced = [r.exc_info[1] for r in failures if r.exc_info]
    assert [str(exc) for exc in traced] == ["broken pipe", "connection reset"]
    assert sum("failed again" in r.getMessage() for r in failures) == 3
    body.release.set()
    await asyncio.wait_for(task, 5)  # a task that returns is done: not started again
    assert body.runs == 6 and tasks.restarts == {"feed": 5}


async def test_a_task_that_keeps_failing_makes_the_process_unhealthy_until_it_runs_again():
    clock = Clock()
    tasks = supervisor(clock, failing_after=3)
    body = Flaky(clock, times=3)
    assert tasks.problem() is None
    task = tasks.start("feed", body)
    await asyncio.wait_for(body.up.wait(), 5)
    # Failed three times in a row, then restarted after 4 s: not yet proven.
    problem = tasks.problem()
    assert problem is not None
    assert "task feed keeps failing (3 times in a row" in problem
    assert "RuntimeError: connection reset" in problem
    clock.now += 3.9
    assert tasks.problem() is not None
    clock.now += 0.1  # running as long as it last waited
    assert tasks.problem() is None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert tasks.problem() is None and not tasks.running("feed")


async def test_a_task_that_fails_after_running_steadily_starts_a_new_count():
    clock = Clock()
    tasks = supervisor(clock, failing_after=3)
    # Each run lasts longer than the wait before it: an occasional failure, not a crash loop.
    body = Flaky(clock, times=6, ran_for=9.0)
    task = tasks.start("sweep", body)
    await asyncio.wait_for(body.up.wait(), 5)
    assert clock.slept == [1.0] * 6
    assert tasks.restarts == {"sweep": 6}
    assert tasks.problem() is None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_tasks_sharing_a_name_are_counted_together_and_named_once():
    clock = Clock()
    tasks = supervisor(clock, failing_after=2)
    bodies = [Flaky(clock, times=2) for _ in range(3)]
    started = [tasks.start("fetch", body) for body in bodies]
    await asyncio.wait_for(asyncio.gather(*(body.up.wait() for body in bodies)), 5)
    assert tasks.restarts == {"fetch": 6}
    problem = tasks.problem()
    assert problem is not None and problem.count("task fetch") == 1
    for task in started:
        task.cancel()
    await asyncio.gather(*started, return_exceptions=True)


async def test_settling_waits_for_cancelled_tasks_only_so_long():
    stuck = asyncio.Event()

    async def deaf() -> None:  # a statement the database never answers, shielded from cancel
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stuck.set()
            await asyncio.Event().wait()

    async def polite() -> None:
        await asyncio.Event().wait()

    tasks = [asyncio.create_task(deaf()), asyncio.create_task(polite())]
    await asyncio.sleep(0)
    await settle(tasks, within_s=0.05)
    assert stuck.is_set() and not tasks[0].done()
    assert tasks[1].cancelled()
    tasks[0].cancel()  # the test's own clean-up: cancelled again, it ends
    await asyncio.gather(tasks[0], return_exceptions=True)


class SlowToCancel:
    """A call to a database gone silent: it hangs, and hangs again once cancelled, until the
    test opens ``gate``; ``cancelled`` says it was cancelled."""

    def __init__(self) -> None:
        self.gate, self.cancelled = asyncio.Event(), asyncio.Event()

    async def __call__(self) -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            await self.gate.wait()
            raise
        return 1


async def test_within_gives_up_on_a_call_without_waiting_for_it_to_end():
    """A stop's last words to a database gone silent: asyncpg ends a cancelled statement by
    connecting to ask the server to cancel it, which can take a connect timeout."""
    call = SlowToCancel()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(within(call(), seconds=0.01), timeout=30)
    await call.cancelled.wait()
    assert not call.gate.is_set()  # it was cancelled and left behind, not waited for
    call.gate.set()
    assert await within(asyncio.sleep(0, result=7), seconds=30) == 7


async def test_closing_an_engine_whose_database_went_silent_ends_on_time(caplog):
    """The last step of a stop: an engine whose connections hang, and hang again when their
    close is cancelled, is left behind with a warning instead of holding the stop."""
    from retrieval.database import close_engine

    class Silent:
        dispose = SlowToCancel()

    await asyncio.wait_for(close_engine(Silent(), within_s=0.01), timeout=30)
    await Silent.dispose.cancelled.wait()
    assert not Silent.dispose.gate.is_set()
    assert "could not close the database connections cleanly: no answer" in caplog.text
    Silent.dispose.gate.set()
