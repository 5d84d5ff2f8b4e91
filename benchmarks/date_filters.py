"""A date-only search of a large guild on PostgreSQL, through the (guild_id, model_id) B-tree
(before revision 0009) and through (guild_id, model_id, posted_at) (after).

A guild of ``--n`` clustered 512-d vectors, one image a minute, beside ``--others`` rows in 100
small guilds, loaded by binary COPY. A search with after:/before: only, of a window of
``--days`` days (fewer rows than ``Layout.exact_max_rows``), runs two statements in a guild
with its own HNSW index: the capped count of matching rows, then, as few match, the exact
search of them. Both are timed here as the store sends them (its own statement builders, its
per-search settings), with each index in turn; no HNSW index is built, as neither statement
would use it. Also: the rows of ``images`` each plan reads (kept or filtered out), and that both
indexes give the same answers.

    python -m benchmarks.date_filters [--n 200000] [--others 100000] [--days 2] [--queries 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from datetime import timedelta

import numpy as np
from sqlalchemy import text

from benchmarks.tenants import DAY0, MODEL, load
from retrieval.database.engine import create_engine, ensure_schema
from retrieval.store import SearchScope
from retrieval.store.pgindex import Layout
from retrieval.store.postgres import _matching, search_settings, search_statement
from tests.records import near

LARGE = 1
INDEXES = {
    "before: (guild_id, model_id)": ("ix_images_guild_model", "guild_id, model_id"),
    "after: (guild_id, model_id, posted_at)": (
        "ix_images_guild_model_posted",
        "guild_id, model_id, posted_at",
    ),
}


async def use_index(engine, name: str, columns: str) -> None:
    """Leave ``name`` the table's only (guild_id, model_id ...) B-tree."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON images ({columns})"))
        for other, _ in INDEXES.values():
            if other != name:
                await conn.execute(text(f"DROP INDEX IF EXISTS {other}"))
        await conn.execute(text("ANALYZE images"))


def _rows_read(plan: dict) -> int:
    own = 0
    if plan.get("Relation Name") == "images":
        kept = plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)
        own = kept * plan["Actual Loops"] + plan.get("Rows Removed by Index Recheck", 0)
    return own + sum(_rows_read(child) for child in plan.get("Plans", []))


async def measure(engine, scope: SearchScope, queries: np.ndarray, k: int) -> dict:
    """p50/p95 ms of the count, of the exact search, and of both; rows read; the answers."""
    cap = Layout().exact_max_rows
    counts, searches, answers = [], [], []
    async with engine.connect() as conn:
        for query in queries:
            started = time.perf_counter()
            matching = int(await conn.scalar(_matching(scope, cap)))
            counted = time.perf_counter()
            await conn.execute(search_settings(None))
            statement = search_statement(query, scope=scope, k=k, indexed=False)
            rows = (await conn.execute(statement)).all()
            done = time.perf_counter()
            await conn.rollback()
            counts.append(counted - started)
            searches.append(done - counted)
            answers.append([row.id for row in rows])
        read = {}
        for name, statement in (
            ("count", _matching(scope, cap)),
            ("search", search_statement(queries[0], scope=scope, k=k, indexed=False)),
        ):
            sql = statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
            value = (await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")).scalar()
            plan = (json.loads(value) if isinstance(value, str) else value)[0]["Plan"]
            read[name] = int(_rows_read(plan))
    both = np.add(counts, searches)
    return {
        "matching": matching,
        "count": np.percentile(counts, [50, 95]) * 1000,
        "search": np.percentile(searches, [50, 95]) * 1000,
        "both": np.percentile(both, [50, 95]) * 1000,
        "read": read,
        "answers": answers,
    }


async def run(args) -> None:
    from benchmarks.store import postgres

    others = [args.others // 100] * 100 if args.others else []
    sizes = np.array([args.n, *others])
    print(f"{args.n:,} vectors x 512 in guild {LARGE}, {args.others:,} in 100 small guilds")
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    async with postgres(args.shared_buffers) as url:
        engine = create_engine(url)
        await ensure_schema(engine)
        load_s, kept = await load(engine, sizes, {LARGE})
        print(f"loaded by COPY in {load_s:.0f} s", flush=True)
        after = DAY0 + timedelta(days=args.start_day)
        scope = SearchScope(LARGE, MODEL, after=after, before=after + timedelta(days=args.days))
        queries = near(kept[LARGE], np.random.default_rng(5), args.queries)
        results = {}
        for label, (name, columns) in INDEXES.items():
            await use_index(engine, name, columns)
            await measure(engine, scope, queries[:5], args.k)  # warm the cache
            results[label] = await measure(engine, scope, queries, args.k)
        await engine.dispose()

    first, second = results.values()
    assert first["answers"] == second["answers"], "the two indexes gave different answers"
    print(
        f"\n{args.days}-day window of guild {LARGE} ({first['matching']:,} of {args.n:,} rows"
        f" match), k={args.k}, {args.queries} queries: ms p50 / p95, rows of images read"
    )
    print(f"{'index':42}{'count':>16}{'exact search':>16}{'both':>16}{'rows read':>20}")
    for label, r in results.items():
        cells = "".join(f"{r[n][0]:>8.1f} / {r[n][1]:<5.1f}" for n in ("count", "search", "both"))
        print(f"{label:42}{cells}{r['read']['count']:>9,} + {r['read']['search']:,}")
    print("same answers with both indexes")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.date_filters")
    parser.add_argument("--n", type=int, default=200_000, help="rows of the large guild")
    parser.add_argument("--others", type=int, default=100_000, help="rows in 100 small guilds")
    parser.add_argument("--days", type=int, default=2, help="the window's length")
    parser.add_argument("--start-day", type=int, default=60, help="the window's first day")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--shared-buffers", default="1GB")
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
