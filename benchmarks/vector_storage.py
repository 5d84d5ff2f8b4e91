"""Where PostgreSQL keeps a 512-d vector, and what exact search pays for it.

One guild's N clustered vectors (50 channels, rows of a channel spread over the table as they
are when channels post in turn) are loaded by binary COPY into three copies of the images
table that differ only in storage:

- ``toasted``: PostgreSQL's defaults, as before revision 0008: a row over 2 KB has its vector
  moved out of line into the TOAST table;
- ``main``: ``ALTER COLUMN embedding SET STORAGE MAIN`` (kept in the row, compression tried);
- ``inline``: ``toast_tuple_target = 8160``, what the schema does now (kept in the row, nothing
  tried below a page).

Then the store's exact statement for one channel (2% of the guild, as a filtered `/find` of a
large guild runs it) at k = 10 and 100, the three tables queried in turn for each query so the
machine's load falls on all alike: p50 and p95, with the COPY time and size of each table.

    python -m benchmarks.store --vector-storage [--n 200000] [--queries 50]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
from sqlalchemy import text

from benchmarks.tenants import MODEL, load
from retrieval.database.engine import create_engine, ensure_schema
from tests.records import near

LAYOUTS = {
    "toasted": "ALTER TABLE images RESET (toast_tuple_target)",
    "main": "ALTER TABLE images RESET (toast_tuple_target);"
    " ALTER TABLE images ALTER COLUMN embedding SET STORAGE MAIN",
    "inline": "ALTER TABLE images SET (toast_tuple_target = 8160)",
}
COLUMNS = (
    "id, guild_id, channel_id, message_id, image_key, kind, author_id, posted_at, filename,"
    " source_url, content_type, content_hash"
)


def exact_sql(table: str) -> str:
    # The store's exact statement (retrieval/store/postgres.py), less its policy subqueries,
    # which weigh the same on every table.
    return (
        f"SELECT {COLUMNS}, cosine_distance(embedding::vector(512), $1::vector) AS distance"
        f" FROM {table} WHERE model_id = '{MODEL}' AND guild_id = 1"
        " AND channel_id = ANY($2::bigint[]) ORDER BY distance LIMIT $3"
    )


async def build(engine, n: int) -> tuple[dict[str, tuple[float, int]], np.ndarray]:
    """Each layout's table loaded; its COPY seconds and bytes, and the guild's vectors."""
    figures = {}
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE images RENAME TO images_template"))
    for name, ddl in LAYOUTS.items():
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE images (LIKE images_template INCLUDING ALL)"))
            for statement in ddl.split(";"):
                await conn.execute(text(statement))
        seconds, kept = await load(engine, np.array([n]), {1})
        async with engine.begin() as conn:
            size = await conn.scalar(text("SELECT pg_table_size('images')"))
            await conn.execute(text(f"ALTER TABLE images RENAME TO images_{name}"))
        figures[name] = (seconds, int(size))
        print(f"{name:8s} loaded in {seconds:.1f} s, {size / 2**20:,.0f} MB", flush=True)
    return figures, kept[1]


async def run(args) -> None:
    from benchmarks.store import postgres

    async with postgres(args.shared_buffers) as url:
        engine = create_engine(url)
        await ensure_schema(engine)
        loaded, x = await build(engine, args.n)
        queries = [
            "[" + ",".join(map(repr, v.tolist())) + "]"
            for v in near(x, np.random.default_rng(2), args.queries)
        ]
        print(f"{args.n:,} vectors x 512, one channel of {args.n // 50:,} rows, exact search")
        print(f"{'layout':8s} {'COPY s':>7s} {'MB':>6s}   k=10 p50 / p95     k=100 p50 / p95")
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            latencies = {(name, k): [] for name in LAYOUTS for k in (10, 100)}
            for k in (10, 100):
                for warm in (True, False):
                    for query in queries:
                        for name in LAYOUTS:
                            started = time.perf_counter()
                            await raw.fetch(exact_sql(f"images_{name}"), query, [1000], k)
                            if not warm:
                                latencies[(name, k)].append(time.perf_counter() - started)
            for name in LAYOUTS:
                seconds, size = loaded[name]
                cells = [
                    f"{np.percentile(latencies[(name, k)], 50) * 1000:6.1f} /"
                    f" {np.percentile(latencies[(name, k)], 95) * 1000:5.1f}"
                    for k in (10, 100)
                ]
                mb = size / 2**20
                print(f"{name:8s} {seconds:7.1f} {mb:6.0f}   {cells[0]} ms     {cells[1]} ms")
        await engine.dispose()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--shared-buffers", default="4GB")
    asyncio.run(run(parser.parse_args(argv)))
