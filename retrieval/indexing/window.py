"""The window: the jobs this process holds, claimed from the table into bounded memory however
large the backlog, their leases renewed while their holder runs, and handed back to the table
when it stops or fails (the next consumer then takes them at once)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace

from retrieval.errors import ModelSwitched, StoreUnavailable
from retrieval.indexing.jobs import Job, JobQueue
from retrieval.indexing.signed_urls import SignedUrls
from retrieval.indexing.waves import RetryWaves
from retrieval.supervisor import Supervisor, within

log = logging.getLogger(__name__)

# Rows due later (retries) or leased by a consumer that died are looked for this often when
# nothing wakes the feeder sooner.
_FEED_POLL_S = 1.0
# The most a stop, or a task that failed, waits to hand jobs back: with the database away, their
# leases bring them back instead (a connection attempt alone can take a minute).
GIVE_BACK_S = 1.5
# ... and at least this, however little of the deadline is left: a job handed back is taken at
# once by the next consumer, one left to its lease waits JOB_LEASE_S.
_GIVE_BACK_FLOOR_S = 0.5
# The tasks that take the jobs waiting in the window's queues: while none of them runs (each
# failed and waits to be started again), those jobs are not renewed for this process.
FETCH, BATCH = "clip-fetch", "clip-batch"


class Window:
    def __init__(
        self,
        jobs: JobQueue,
        *,
        size: int,
        refill: int,
        supervisor: Supervisor,
        signed_urls: SignedUrls,
        waves: RetryWaves,
        tasks: tuple[str, ...] = (FETCH, BATCH),
    ) -> None:
        self.jobs = jobs
        # The tasks that take this window's jobs, the first from its intake.
        self._tasks = tasks
        self.size = size
        self.held: dict[int, Job] = {}  # claimed and not finished
        # Held jobs waiting in a queue, and the task name that takes them from it.
        self.queued: dict[int, str] = {}
        self.intake: asyncio.Queue[Job] = asyncio.Queue()  # for the fetch workers
        self.claiming = False
        self._wake = asyncio.Event()
        # Whether the table may hold due rows the last claim left behind: it filled the room,
        # or rows were written since. Only then is freed room worth a claim, and only once a
        # batch's worth (``refill``) is free: a claim per finished image was most of the queue's
        # cost on the event loop (benchmarks/RESULTS.md).
        self._more = True
        self._refill = refill
        self._supervisor = supervisor
        self._signed_urls = signed_urls
        self._waves = waves
        # Set once a write found the index built with another model: nothing more is claimed.
        self.switched: ModelSwitched | None = None

    def stop_claiming(self, switched: ModelSwitched) -> bool:
        """The index is built with another model now: claim nothing more. True the first time."""
        first = self.switched is None
        self.switched = switched
        return first

    def __len__(self) -> int:
        return len(self.held)

    def rows_written(self) -> None:
        """Look at the table now: rows were written (here or by another process)."""
        self._more = True
        self._wake.set()

    async def drained(self, due: Callable[[], Awaitable[bool]]) -> bool:
        """Whether no job is in hand here and ``due()`` says none is due in the table (a
        `join`'s test). The window is asked again after the table answers: rows claimed while
        it answered are in hand by then, or still being claimed. With jobs due, the feeder is
        told to look now (retries come due) rather than at its next poll."""
        if self.held or self.claiming:
            return False
        if not await due() and not self.held and not self.claiming:
            return True
        self.rows_written()
        return False

    async def feed_loop(self) -> None:
        looked = float("-inf")  # the table may hold rows already (a previous run's)
        while True:
            room = self.size - len(self.held)
            if not self._takers_run():
                # What it claimed would sit out its lease here (a claim renews it) while another
                # consumer could take it: no work is asked for until they run again.
                room = 0
            # Rows come due unannounced (retries, leases of a consumer that died): once a poll
            # interval has passed, any room is worth a look, however often the feeder was woken.
            polled = time.monotonic() - looked >= _FEED_POLL_S
            if room > 0 and (polled or (self._more and room >= self._refill)):
                looked = time.monotonic()
                self._more = False  # rows written during the claim set it again
                try:
                    claimed = await self._claim(room)
                except StoreUnavailable as exc:
                    self._more = True
                    if exc.refused:  # waiting will not cure it: the supervisor says so
                        raise
                    log.error("database unavailable, cannot take jobs: %s", exc)
                    await asyncio.sleep(_FEED_POLL_S * 2)
                    continue
                if len(claimed) == room:
                    self._more = True
                # Expired links are refreshed together, off this loop; downloads wait for them.
                self._signed_urls.prefetch(job.ref for job in claimed)
                for job in claimed:
                    # A job of ours whose lease ran out (its renewal failed) comes back with the
                    # claim: it is on its way already, and the claim renewed its lease.
                    if job.id in self.held:
                        continue
                    self.held[job.id] = job
                    self.queued[job.id] = self._tasks[0]
                    self.intake.put_nowait(job)
            if not self._more:
                await self._waves.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _FEED_POLL_S)
            self._wake.clear()

    async def _claim(self, room: int) -> list[Job]:
        if self.switched is not None:  # whatever it encoded could not be stored
            return []
        self.claiming = True  # join() must not take these rows for done while they come
        try:
            return await self.jobs.claim(room)
        finally:
            self.claiming = False

    async def renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.jobs.lease_s / 3)
            with contextlib.suppress(StoreUnavailable):
                await self.jobs.renew(self._renewable())

    def _renewable(self) -> list[int]:
        """The held jobs whose holder runs: a job in hand, or one queued for a task that is not
        waiting to be started again after a failure. The others' leases run out, and another
        consumer takes them."""
        alive = {name: self._supervisor.running(name) for name in self._tasks}
        return [i for i in self.held if alive.get(self.queued.get(i, ""), True)]

    def _takers_run(self) -> bool:
        """Whether the tasks that take the window's jobs run (none waits to be started again)."""
        return all(self._supervisor.running(name) for name in self._tasks)

    def taken(self, job_id: int, by: str | None = None) -> None:
        """A held job left its queue: in hand now, or (``by``) queued for that task."""
        if by is None:
            self.queued.pop(job_id, None)
        else:
            self.queued[job_id] = by

    def with_url(self, job: Job, url: str) -> None:
        """A fresh link for a held job: not refreshed again with the ones in hand."""
        if job.id in self.held:
            self.held[job.id] = replace(job, ref=replace(job.ref, url=url))

    def refs(self) -> Iterable:
        return (job.ref for job in self.held.values())

    def finished(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self.held.pop(job.id, None)
            self.queued.pop(job.id, None)
        self._wake.set()  # room in the window

    async def drop(self, job_ids: list[int]) -> None:
        """Jobs a task claimed and could not hand on: back to the table, as it fails."""
        self.finished([self.held[i] for i in job_ids if i in self.held])
        await self.give_back(job_ids)

    async def give_back(self, job_ids: list[int], *, within_s: float = GIVE_BACK_S) -> int:
        """Hand claimed jobs back to the table for the next consumer, waiting at most
        ``within_s``; with the database away, their leases run out instead."""
        try:
            return await within(self.jobs.release(job_ids), seconds=within_s)
        except (StoreUnavailable, TimeoutError) as exc:
            why = exc if isinstance(exc, StoreUnavailable) else f"no answer in {within_s:g}s"
            log.warning("could not hand back %d jobs (their lease runs out): %s", len(job_ids), why)
            return 0

    async def give_back_all(self, *, deadline: float) -> None:
        """At a stop: every job still held goes back, within what is left before ``deadline``
        (a monotonic time) or at least a moment."""
        if self.held:
            left = max(deadline - time.monotonic(), _GIVE_BACK_FLOOR_S)
            if released := await self.give_back(list(self.held), within_s=min(GIVE_BACK_S, left)):
                log.info("handed %d unfinished jobs back to the queue", released)
            self.held.clear()
            self.queued.clear()
