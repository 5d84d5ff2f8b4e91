"""Bulk writes and deletes through the store, the way the indexing pipeline calls it.

For each database and batch size, on a fresh database: N images are queued as jobs (5,000 a
call), then stored with ``store.upsert(records, job_ids=...)`` one batch at a time (each write
also takes its jobs, as the pipeline's does), then single live writes (one image and its job per
call, on the now full table), then those deleted one message per call (as a member's deletion
is), then every other row deleted with ``store.delete_messages`` one batch at a time. On SQLite
the guild's matrix is loaded first, as in a server people search, so writes and deletes keep it
up to date. PostgreSQL is measured without its HNSW index (a first backfill, before anyone
searched); ``--hnsw`` builds it first. ``--writers 1,2`` stores with that many batches in
flight at once (the pipeline's encode slots overlap their writes, and several workers write at
once): HNSW insertion is CPU work in the server, so it scales with the server's cores and the
writers that keep them busy.

    python -m benchmarks.store --bulk [--n 100000] [--batches 500,2000] [--baseline main]
    python -m benchmarks.store --bulk --databases postgres --hnsw --writers 1,2

``--baseline REV`` measures that git revision's store too (exported with ``git archive``), in
its own process, side by side on the same PostgreSQL server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GUILD, MODEL = 1, "bench-model"
CHANNELS, AUTHORS = 50, 97
LIVE_WRITES = 200
QUEUE_CHUNK = 5_000


def records_and_refs(start: int, x: np.ndarray):
    from tests.records import image_record, job_ref

    records = [
        image_record(
            start + i,
            v,
            guild_id=GUILD,
            channels=(100, CHANNELS),
            authors=AUTHORS,
            model_id=MODEL,
        )
        for i, v in enumerate(x)
    ]
    refs = [job_ref(r) for r in records]
    return records, refs


async def queued(engine, jobs, refs) -> list[int]:
    """Queue the images as jobs; their ids, in the order of ``refs``."""
    from sqlalchemy import select

    from retrieval.database.tables import IndexJob

    for start in range(0, len(refs), QUEUE_CHUNK):
        await jobs.enqueue(refs[start : start + QUEUE_CHUNK], priority=1)
    async with engine.connect() as conn:
        rows = await conn.execute(select(IndexJob.message_id, IndexJob.id))
        by_message = dict(rows.all())
    return [by_message[ref.message_id] for ref in refs]


async def measure(url: str, n: int, dim: int, batch: int, hnsw: bool, writers: int = 1) -> dict:
    """One database, one batch size: rows/s written and deleted, ms per live write."""
    from retrieval.database.engine import create_engine, ensure_schema
    from retrieval.indexing import JobQueue
    from retrieval.store import SearchScope, open_store
    from tests.records import clustered

    engine = create_engine(url)
    await ensure_schema(engine)
    store = open_store(engine)
    jobs = JobQueue(engine, model_id=MODEL)
    x = clustered(n + LIVE_WRITES, dim, np.random.default_rng(0), clusters=max(10, n // 100))
    scope = SearchScope(GUILD, MODEL)
    out: dict = {}
    try:
        if hnsw and engine.dialect.name == "postgresql":
            from retrieval.store.pgindex import Layout
            from retrieval.store.postgres import PgVectorStore

            # The guild's own index from its first row on (min_rows 0), built on the empty table.
            await store.close()
            store = PgVectorStore(engine, layout=Layout(min_rows=0, drop_below=0), sweep=False)
            await store.indexes.check(GUILD, MODEL, dim)
        else:
            await store.search(x[0], scope=scope, k=10)  # SQLite: the guild's matrix is live
        records, refs = records_and_refs(0, x[:n])
        started = time.perf_counter()
        job_ids = await queued(engine, jobs, refs)
        out["enqueue_rows_s"] = n / (time.perf_counter() - started)
        started = time.perf_counter()
        slots = asyncio.Semaphore(writers)

        async def write(start: int) -> int:
            async with slots:
                end = start + batch
                return await store.upsert(records[start:end], job_ids=job_ids[start:end])

        written = sum(await asyncio.gather(*(write(start) for start in range(0, n, batch))))
        out["insert_rows_s"] = n / (time.perf_counter() - started)
        assert written == n, (written, n)

        live, live_refs = records_and_refs(n, x[n:])
        live_jobs = await queued(engine, jobs, live_refs)
        started = time.perf_counter()
        for record, job_id in zip(live, live_jobs, strict=True):
            await store.upsert([record], job_ids=[job_id])
        out["live_ms"] = (time.perf_counter() - started) / LIVE_WRITES * 1000
        assert await store.count(guild_id=GUILD) == n + LIVE_WRITES

        hits = await store.search(x[1], scope=scope, k=10)
        assert hits and hits[0].image_key == 1, "the store must find what it wrote"

        started = time.perf_counter()
        deleted = 0
        for one in live:
            deleted += await store.delete_messages([one.message_id], guild_id=GUILD)
        out["delete_one_ms"] = (time.perf_counter() - started) / LIVE_WRITES * 1000
        assert deleted == LIVE_WRITES, deleted

        messages = [r.message_id for r in records]
        started = time.perf_counter()
        deleted = 0
        for start in range(0, len(messages), batch):
            deleted += await store.delete_messages(messages[start : start + batch])
        out["delete_rows_s"] = len(messages) / (time.perf_counter() - started)
        assert deleted == len(messages), (deleted, len(messages))
        assert not await store.search(x[1], scope=scope, k=10)
    finally:
        await store.close()
        await engine.dispose()
    return out


async def fresh_database(server_url: str) -> str:
    """A new empty database on the benchmark's PostgreSQL server; its URL."""
    import asyncpg

    host = server_url.split("host=", 1)[1]
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(user="postgres", database="postgres", host=host)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return server_url.replace("/postgres?", f"/{name}?")


async def measure_all(pg_url: str, args: argparse.Namespace) -> dict:
    results: dict = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        for writers in [int(w) for w in args.writers.split(",")]:
            for db in args.databases.split(","):
                with tempfile.TemporaryDirectory() as tmp:
                    if db == "sqlite":
                        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
                    else:
                        url = await fresh_database(pg_url)
                    results[f"{db}/{batch}/{writers}"] = await measure(
                        url, args.n, args.dim, batch, args.hnsw, writers
                    )
    return results


def run_version(code: Path, args: argparse.Namespace, pg_url: str) -> dict:
    """This benchmark in a fresh process whose `retrieval` is the code in ``code``."""
    env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{ROOT}"}
    cmd = [
        sys.executable,
        __file__,
        "--measure",
        pg_url,
        f"--n={args.n}",
        f"--dim={args.dim}",
        f"--batches={args.batches}",
        f"--databases={args.databases}",
        f"--writers={args.writers}",
        *(["--hnsw"] if args.hnsw else []),
    ]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def export(revision: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "retrieval", "migrations"],
        check=True,
        capture_output=True,
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def report(args: argparse.Namespace, results: dict[str, dict], load: str) -> None:
    names = list(results)
    print(f"\n{args.n} x {args.dim} vectors, one guild, through store.upsert(job_ids=...) and")
    print("store.delete_messages; PostgreSQL " + ("with" if args.hnsw else "without") + " HNSW")
    print(f"load average (1 min) before and after: {load}\n")
    ratio = len(names) == 2
    print(f"{'':46}" + "".join(f"{name:>12}" for name in names) + ("       ratio" if ratio else ""))
    labels = {
        "enqueue_rows_s": "{db} enqueue, 5,000 a call",
        "insert_rows_s": "{db} insert, batches of {batch}{by}",
        "delete_rows_s": "{db} delete, batches of {batch}",
        "live_ms": "{db} one live write, ms",
        "delete_one_ms": "{db} one message deleted, ms",
    }
    for case in next(iter(results.values())):
        db, batch, writers = case.split("/")
        by = f", {writers} writers" if writers != "1" else ""
        for metric, label in labels.items():
            values = [results[name][case][metric] for name in names]
            in_ms = metric.endswith("_ms")
            fmt = "{:>12,.2f}" if in_ms else "{:>12,.0f}"
            line = f"{label.format(db=db, batch=batch, by=by):46}"
            line += "".join(fmt.format(v) for v in values)
            if ratio:  # how many times better the second is than the first
                better = values[0] / values[1] if in_ms else values[1] / values[0]
                line += f"{better:>11.1f}x"
            print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batches", default="500,2000", help="batch sizes, comma-separated")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--hnsw", action="store_true", help="build PostgreSQL's index first")
    parser.add_argument("--writers", default="1", help="batches written at once, comma-separated")
    parser.add_argument("--baseline", help="a git revision to measure too, e.g. main")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # PostgreSQL URL, child process
    args = parser.parse_args(argv)
    if args.measure:
        results = asyncio.run(measure_all(args.measure, args))
        print(json.dumps(results))
        return

    from benchmarks.store import postgres

    async def server() -> None:
        load = f"{os.getloadavg()[0]:.2f}"
        async with postgres("1GB") as url:
            with tempfile.TemporaryDirectory() as tmp:
                versions = {"this": ROOT}
                if args.baseline:
                    base = export(args.baseline, Path(tmp) / "base")
                    versions = {args.baseline: base, **versions}
                results = {}
                for name, code in versions.items():
                    print(f"{name} …", flush=True)
                    results[name] = await asyncio.to_thread(run_version, code, args, url)
            report(args, results, f"{load}, {os.getloadavg()[0]:.2f}")

    asyncio.run(server())


if __name__ == "__main__":
    main()
