"""The pipeline's tasks under the supervisor, on both databases: a task that fails is restarted
and counted, the work it held goes back to the table, claims are renewed only while the task
holding them runs, and /healthz says when a task keeps failing and when it recovers."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import aiohttp
from sqlalchemy import select

from retrieval.database.tables import IndexConsumer
from retrieval.errors import StoreUnavailable
from retrieval.indexing import JobQueue, RetryPolicy
from retrieval.runtime.operating import operator_view
from retrieval.supervisor import Backoff, Supervisor
from tests.db.test_operating import settings
from tests.db.test_pipeline import host, ref, running_pipeline  # noqa: F401 - host: a fixture
from tests.helpers import eventually, free_port
from tests.tinyclip.shapes import draw, png_bytes


class BrokenJobs(JobQueue):
    """The real queue, with an unexpected error (a bug, a driver surprise) in ``claim`` while
    ``claims_broken``, and in ``retry`` for the next ``retries_broken`` calls."""

    def __init__(self, *args, **options) -> None:
        super().__init__(*args, **options)
        self.claims_broken = False
        self.retries_broken = 0
        self.claims = 0  # calls of ``claim``

    async def claim(self, limit: int):
        self.claims += 1
        if self.claims_broken:
            raise RuntimeError("claim broke")
        return await super().claim(limit)

    async def retry(self, *args, **options):
        if self.retries_broken:
            self.retries_broken -= 1
            raise RuntimeError("retry bookkeeping broke")
        return await super().retry(*args, **options)


def broken_jobs(store, model_id: str, *, lease_s: float = 300.0) -> BrokenJobs:
    return BrokenJobs(
        store.engine, model_id=model_id, retry=RetryPolicy(0.05, 0.2, 30.0), lease_s=lease_s
    )


def quick(**options) -> Supervisor:
    return Supervisor(backoff=Backoff(first_s=0.05, max_s=0.4), **options)


def host_pictures(images, prefix: str, n: int, *, seed: int, fail_first: int = 0) -> list[str]:
    names = [f"{prefix}{i}.png" for i in range(n)]
    for i, name in enumerate(names):
        images.files[name] = (png_bytes(draw("green", "circle", rng=seed + i)), "image/png")
        if fail_first:
            images.fail_first[name] = fail_first
    return names


async def test_a_failed_fetch_worker_is_restarted_and_its_image_indexed(
    host,  # noqa: F811
    store,
    tiny_encoder,
    caplog,
):
    names = host_pictures(host, "w", 5, seed=900)
    host.fail_first[names[0]] = 3  # past the quick retries: the job goes back for a later try
    jobs = broken_jobs(store, tiny_encoder.model_id)
    jobs.retries_broken = 1  # ... and handing it back fails: the worker holding it fails
    supervisor = quick()
    caplog.set_level(logging.ERROR, logger="retrieval.supervisor")
    async with running_pipeline(
        tiny_encoder, store, origins=host.origin, jobs=jobs, fetch_workers=1, supervisor=supervisor
    ) as pipe:
        await pipe.submit([ref(host, name, 900 + i) for i, name in enumerate(names)])
        await asyncio.wait_for(pipe.join(), 60)
        assert await store.count(guild_id=1) == 5
    assert supervisor.restarts == {"clip-fetch": 1}
    assert not pipe.counters.failed
    failure = next(r for r in caplog.records if r.exc_info)
    assert "task clip-fetch failed" in failure.getMessage()
    assert "retry bookkeeping broke" in str(failure.exc_info[1])


async def test_claims_are_renewed_only_while_the_task_that_holds_them_runs(
    host,  # noqa: F811
    store,
    tiny_encoder,
):
    # Every download fails for a while and handing the job back fails too: the one fetch worker
    # fails at its first job and waits long to be started again.
    names = host_pictures(host, "r", 4, seed=950, fail_first=100)
    # Longer than the feeder's poll (1 s): it looks at the table before any lease runs out.
    jobs = broken_jobs(store, tiny_encoder.model_id, lease_s=2.0)
    jobs.retries_broken = 100
    other = JobQueue(store.engine, model_id=tiny_encoder.model_id, lease_s=60.0)
    taken: set[int] = set()

    async def all_taken_by_another_consumer() -> bool:
        taken.update(job.id for job in await other.claim(10))
        return len(taken) == 4

    supervisor = Supervisor(backoff=Backoff(first_s=600.0, max_s=600.0))
    async with running_pipeline(
        tiny_encoder, store, origins=host.origin, jobs=jobs, fetch_workers=1, supervisor=supervisor
    ) as pipe:
        await pipe.submit([ref(host, name, 950 + i) for i, name in enumerate(names)])
        await eventually(lambda: _is(supervisor.restarts["clip-fetch"] == 1), within=30)
        claims = jobs.claims
        # The jobs it held and those waiting for it are left to their leases: another consumer
        # takes them all once those run out...
        await eventually(all_taken_by_another_consumer, within=30)
        assert not supervisor.running("clip-fetch")
        # ... and none is taken back meanwhile (a claim renews the lease of a job it returns):
        # with no fetch worker running, the process asks for no work.
        assert jobs.claims == claims


async def test_healthz_turns_503_while_a_task_keeps_failing_and_200_once_it_recovers(
    host,  # noqa: F811
    store,
    tiny_encoder,
):
    jobs = broken_jobs(store, tiny_encoder.model_id)
    jobs.claims_broken = True
    supervisor = quick(failing_after=3)
    health, metrics = free_port(), free_port()
    options = settings(health_port=health, metrics_port=metrics, metrics_addr="127.0.0.1")
    async with (
        running_pipeline(
            tiny_encoder, store, origins=host.origin, jobs=jobs, supervisor=supervisor
        ) as pipe,
        operator_view(
            engine=store.engine,
            role="bot",
            pipeline=pipe,
            settings=options,
            supervisor=supervisor,
            report_every_s=0.05,
        ),
        aiohttp.ClientSession() as http,
    ):
        for port in (health, metrics):
            await eventually(lambda port=port: _status_is(http, port, 503), within=30)
            body = await _get(http, f"http://127.0.0.1:{port}/healthz")
            assert body.startswith("unhealthy: task clip-feed keeps failing (")
            assert "RuntimeError: claim broke" in body
        figures = await _get(http, f"http://127.0.0.1:{metrics}/metrics")
        assert "clipfind_healthy 0.0" in figures
        assert _restarts(figures, "clip-feed") >= 3
        # The heartbeat row says so too, for the other processes' operators.
        await eventually(lambda: _problem_is_reported(store.engine, "task clip-feed keeps"))

        jobs.claims_broken = False
        for port in (health, metrics):
            await eventually(lambda port=port: _status_is(http, port, 200), within=30)
            assert await _get(http, f"http://127.0.0.1:{port}/healthz") == "ok\n"
        names = host_pictures(host, "h", 2, seed=980)
        await pipe.submit([ref(host, name, 980 + i) for i, name in enumerate(names)])
        await asyncio.wait_for(pipe.join(), 60)
        assert await store.count(guild_id=1) == 2
        figures = await _get(http, f"http://127.0.0.1:{metrics}/metrics")
        assert "clipfind_healthy 1.0" in figures
        await eventually(lambda: _problem_is_reported(store.engine, None))
        assert _restarts(figures, "clip-feed") == supervisor.restarts["clip-feed"]
        assert set(supervisor.restarts) == {"clip-feed"}


async def _problem_is_reported(engine, start: str | None) -> bool:
    async with engine.connect() as conn:
        (problem,) = (await conn.execute(select(IndexConsumer.problem))).one()
    return problem is None if start is None else (problem or "").startswith(start)


async def _is(value: bool) -> bool:
    return value


async def _get(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        return await response.text()


async def _status_is(http: aiohttp.ClientSession, port: int, status: int) -> bool:
    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
        return response.status == status


def _restarts(figures: str, task: str) -> float:
    line = next(
        row
        for row in figures.splitlines()
        if row.startswith(f'clipfind_task_restarts_total{{task="{task}"}}')
    )
    return float(line.split()[-1])


class UnrenewableJobs(JobQueue):
    """The real queue, whose lease renewals meet a database outage; counts the claims of each
    job."""

    def __init__(self, *args, **options) -> None:
        super().__init__(*args, **options)
        self.claims: Counter[int] = Counter()

    async def claim(self, limit: int):
        claimed = await super().claim(limit)
        self.claims.update(job.id for job in claimed)
        return claimed

    async def renew(self, job_ids) -> None:
        raise StoreUnavailable("database error: connection refused")


async def test_a_job_whose_lease_ran_out_in_hand_is_not_taken_up_twice(
    host,  # noqa: F811
    store,
    tiny_encoder,
):
    """Renewals fail (an outage) while a download hangs: the lease runs out, and the feeder's
    next claim brings the job back. It is on its way already: one download, one row."""
    (name,) = host_pictures(host, "held", 1, seed=960)
    host.held.add(name)
    jobs = UnrenewableJobs(store.engine, model_id=tiny_encoder.model_id, lease_s=0.3)
    async with running_pipeline(
        tiny_encoder, store, origins=host.origin, jobs=jobs, fetch_workers=2
    ) as pipe:
        await pipe.submit([ref(host, name, 960)])
        await eventually(lambda: _is(max(jobs.claims.values(), default=0) >= 2), within=30)
        host.hold.set()
        await pipe.join()
    assert host.hits[name] == 1
    assert await store.count(guild_id=1) == 1
