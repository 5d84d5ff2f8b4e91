"""Soak: the cluster as deployed, under mixed load and chaos for N minutes, then its promises
checked.

On an embedded PostgreSQL, one gateway process (`python -m bot`, ENCODE_IMAGES=false) and two
encoder workers (`python -m bot worker`) run against the Discord stand-in with the tiny test
model. Members post pictures (attachments and link previews), edit and delete messages, search
with `/find`, opt out and back in; a share of the posts are hostile inputs (a NUL in a file name
or a link, a lone surrogate, a 10 kB file name, a corrupt picture, a link with port 99999).
PostgreSQL is stopped and started again every few minutes (a fast stop and a crash in turn),
and while it is down members make one of each change (an attachment edited out, a preview
hidden, an attachment added, a deletion, posts, an opt-out or opt-in); one of the workers is
killed with SIGKILL now and then and started again (the other lives throughout, for its memory
figures).

At the end, once the queue has drained: every good picture still on the stand-in, not deleted
and not by an opted-out member, is stored and found by a search for its own vector (lost: 0);
nothing of a deleted message, an edited-out picture or an opted-out member is stored
(forbidden: 0); no job is due; each long-lived process's memory grew less than 10% after the
warm-up; no process became unhealthy or died, and each stopped with status 0; no error escaped
unhandled (an event handler that raised, a task nobody awaited); no search showed what it must
not. It prints restarts by task, throughput and refusals by reason, and exits 1
when a promise failed.

    python -m benchmarks.soak --minutes 30            # the recorded run (benchmarks/RESULTS.md)
    python -m benchmarks.soak --minutes 2 --rate 5    # a short look
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.exc import DBAPIError  # noqa: E402

from benchmarks.soak_cluster import Cluster, Role  # noqa: E402
from benchmarks.soak_load import Load  # noqa: E402
from benchmarks.soak_report import Options, Report, print_report  # noqa: E402
from benchmarks.soak_world import KEEP, World  # noqa: E402
from retrieval.database.engine import create_engine, ensure_schema  # noqa: E402
from retrieval.database.tables import IndexedImage, IndexFailure, IndexJob  # noqa: E402
from retrieval.store import SearchScope, open_store  # noqa: E402
from tests.conftest import embedded_server, postgres_url  # noqa: E402
from tests.fakediscord import FakeDiscord  # noqa: E402
from tests.pgserver import Restartable  # noqa: E402

# Settings of every process: leases and retries short enough that the end of a soak of minutes
# sees a killed worker's claims and a retried download come back; a window of a few batches.
PROCESS_SETTINGS = dict(
    JOB_LEASE_S="20",
    RETRY_FIRST_S="2",
    RETRY_MAX_S="30",
    QUEUE_SIZE="32",
    DATABASE_POOL_TIMEOUT_S="5",
)


async def soak(options: Options) -> Report:
    report = Report(options, loadavg=(os.getloadavg(), ()))
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="clipfind-soak-"))
    report.workdir = workdir
    workdir.mkdir(parents=True, exist_ok=True)
    with embedded_server("clipfind-soak-pg-", citus=False) as server:
        url = postgres_url(server, "postgres")
        engine = create_engine(url)
        await ensure_schema(engine)
        try:
            async with FakeDiscord() as fd:
                world = World.build(fd, servers=options.servers, members=options.members)
                async with Cluster(
                    fd=fd,
                    url=url,
                    postgres=Restartable(server),
                    workdir=workdir,
                    **PROCESS_SETTINGS,
                ) as cluster:
                    await cluster.start_all()
                    await _run(options, report, world, cluster, engine)
        finally:
            await engine.dispose()
    report.loadavg = (report.loadavg[0], os.getloadavg())
    return report


async def _run(options: Options, report: Report, world: World, cluster: Cluster, engine) -> None:
    load = report.load = Load(world, rate=options.rate, hostile=options.hostile, seed=options.seed)
    stop = asyncio.Event()
    started = report.started = time.monotonic()
    watching = asyncio.create_task(_watch(cluster, engine, report, every_s=options.sample_s))
    chaos = [
        asyncio.create_task(_postgres_restarts(cluster, load, options, stop)),
        asyncio.create_task(_worker_kills(cluster, options, stop)),
    ]
    try:
        await load.run(
            seconds=options.minutes * 60,
            until=lambda: _chaos_seen(options, cluster, load),
            most_s=options.overtime_s,
        )
        report.load_s = time.monotonic() - started
        stop.set()
        await asyncio.gather(*chaos)  # the restart under way ends with its process up
        await load.finished()
        ended = time.monotonic()
        await _drained(engine, report, within=options.drain_s)
        report.drain_s = time.monotonic() - ended
        await _findable(engine, report)
        await cluster.check_health()
    finally:
        stop.set()
        for task in (*chaos, watching):
            task.cancel()
        await asyncio.gather(*chaos, watching, return_exceptions=True)
        report.died = cluster.died()
        report.stops = await cluster.stop_all()
        report.unhandled = cluster.unhandled()
    report.roles = cluster.roles
    report.postgres_restarts = cluster.postgres_restarts
    report.posted = load.tally.pictures_posted
    warm = started + options.warmup * report.load_s
    for role in (cluster.gateway, cluster.steady_worker):
        report.memory[role.name] = _memory(role, since=warm)
    async with engine.connect() as conn:
        failures = await conn.execute(
            select(IndexFailure.reason, func.sum(IndexFailure.count)).group_by(IndexFailure.reason)
        )
        report.refused = Counter({reason: int(n) for reason, n in failures})


def _chaos_seen(options: Options, cluster: Cluster, load: Load) -> bool:
    """Whether the restarts and kills the run must see have happened, each restart's burst of
    changes made while the database was away included."""
    return (
        load.tally.actions["outage bursts"] >= options.least_postgres_restarts
        and len(cluster.killed_worker.lives) > options.least_kills
    )


def _memory(role: Role, *, since: float) -> tuple[float, float] | None:
    """(MB just after ``since``, MB at the end): medians of the first and the last tenth of the
    samples taken after ``since``; None with fewer than two."""
    samples = [kb for at, kb in role.life.rss_kb if at >= since]
    if len(samples) < 2:
        return None
    tenth = max(1, len(samples) // 10)
    return statistics.median(samples[:tenth]) / 1024, statistics.median(samples[-tenth:]) / 1024


async def _postgres_restarts(
    cluster: Cluster, load: Load, options: Options, stop: asyncio.Event
) -> None:
    modes = ("fast", "immediate")  # a clean stop, then a crash (recovery at the next start)
    while not await _wait(stop, options.postgres_every_s):
        mode = modes[cluster.postgres_restarts % 2]
        await cluster.restart_postgres(
            down_s=options.postgres_down_s, mode=mode, stopped=load.outage
        )


async def _worker_kills(cluster: Cluster, options: Options, stop: asyncio.Event) -> None:
    while not await _wait(stop, options.kill_every_s):
        await cluster.kill_and_restart(cluster.killed_worker, down_s=options.kill_down_s)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Whether ``stop`` was set within ``seconds``."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def _watch(cluster: Cluster, engine, report: Report, *, every_s: float) -> None:
    while True:
        cluster.sample_memory()
        await cluster.check_health()
        if not cluster.postgres_down:
            try:
                async with engine.connect() as conn:
                    jobs = await conn.scalar(select(func.count()).select_from(IndexJob))
                report.most_jobs = max(report.most_jobs, int(jobs))
            except (DBAPIError, OSError):
                pass  # the server is going down right now
        await asyncio.sleep(every_s)


async def _drained(engine, report: Report, *, within: float) -> None:
    """Wait until nothing good is missing, nothing forbidden is stored and no job is due (or
    ``within`` has passed); the report says what was found last."""
    give_up = time.monotonic() + within
    fates = report.load.ledger.fates()
    while True:
        async with engine.connect() as conn:
            keys = await conn.execute(select(IndexedImage.message_id, IndexedImage.image_key))
            stored = {(m, k) for m, k in keys}
            due = await conn.scalar(
                select(func.count()).select_from(IndexJob).where(IndexJob.retry_at <= func.now())
            )
            later = await conn.scalar(select(func.count()).select_from(IndexJob))
        report.stored = len(stored)
        report.due_jobs, report.later_jobs = int(due), int(later) - int(due)
        report.lost = [
            f"{m}/{k}"
            for (m, k), (fate, _) in fates.items()
            if fate == KEEP and (m, k) not in stored
        ]
        report.forbidden = [
            f"{m}/{k} ({fate})"
            for m, k in stored
            if (fate := fates.get((m, k), ("not posted by the soak", None))[0]) != KEEP
        ]
        if not (report.lost or report.forbidden or report.due_jobs):
            return
        if time.monotonic() > give_up:
            return
        await asyncio.sleep(1.0)


async def _findable(engine, report: Report) -> None:
    """Each stored good picture is among the ten best hits of a search for its own vector,
    through the store's search as `/find` runs it (the server's scope and model, the opt-outs
    and exclusions it applies)."""
    store = open_store(engine)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        IndexedImage.guild_id,
                        IndexedImage.message_id,
                        IndexedImage.image_key,
                        IndexedImage.model_id,
                        IndexedImage.embedding,
                    )
                )
            ).all()
        fates = report.load.ledger.fates()
        for guild_id, message_id, key, model_id, vector in rows:
            if fates.get((message_id, key), ("",))[0] != KEEP:
                continue
            hits = await store.search(vector, scope=SearchScope(guild_id, model_id), k=10)
            if (message_id, key) not in {(h.message_id, h.image_key) for h in hits}:
                report.unfindable.append(f"{message_id}/{key}")
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    defaults = Options()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=defaults.minutes)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="actions per second")
    parser.add_argument(
        "--hostile",
        type=float,
        default=defaults.hostile,
        help="share of posts that are hostile inputs",
    )
    parser.add_argument("--postgres-every", type=float, default=defaults.postgres_every_s)
    parser.add_argument("--postgres-down", type=float, default=defaults.postgres_down_s)
    parser.add_argument("--kill-every", type=float, default=defaults.kill_every_s)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workdir", type=Path, help="for the processes' logs (default: temporary)")
    args = parser.parse_args(argv)
    options = Options(
        minutes=args.minutes,
        rate=args.rate,
        hostile=args.hostile,
        postgres_every_s=args.postgres_every,
        postgres_down_s=args.postgres_down,
        kill_every_s=args.kill_every,
        seed=args.seed,
        workdir=args.workdir,
    )
    report = asyncio.run(soak(options))
    print_report(report)
    failures = report.failures()
    for line in failures:
        print(f"FAILED: {line}")
    print("all promises held" if not failures else f"{len(failures)} promises failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
