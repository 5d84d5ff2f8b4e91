"""Many guilds in one PostgreSQL: the per-guild layout of retrieval/store/pgindex.py measured.

A synthetic instance: N clustered 512-d vectors over G guilds with Zipf-distributed sizes (the
largest holds about a fifth), loaded by binary COPY, then every guild at or above the threshold
gets its own HNSW index from the store's background builder (timed, with single and batched
writes going on meanwhile: their longest wait is the figure). Then, through the store as the
bot calls it, for guilds of each size class (the largest, the smallest with an index, the
largest without, the median), unfiltered and with a 2% channel filter, at k = 10 and 100: p95
latency, recall@k against exact search, and how many searches ran two scans. Sizes per million
vectors: table, and index with half precision against float32 (the largest guild indexed both
ways, with recall and latency for each).

    python -m benchmarks.store --tenants [--n 1000000] [--guilds 1000] [--queries 50]
    python -m benchmarks.store --tenants --compare-layouts [--n 200000] [--guilds 200]
    python -m benchmarks.store --tenants --worded 0.3 --words-only --no-precision [--explain]

``--worded`` gives that share of every guild's images words, as the OCR lane stores them
(benchmarks/words_search.py's captions), and times `/find`'s first page per size class: 200
candidates in every channel of the guild, CLIP alone and with words (words_search.py's four kinds
of query, their words from the guild's own captions); ``--words-only`` skips the other figures.

``--compare-layouts`` measures the alternative first: the same rows in a table hash-partitioned
by guild_id with an HNSW index per partition, each guild searched with an iterative scan of its
partition; side by side with the per-guild layout.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import event, text

from benchmarks.words_search import caption, cases, pairs
from retrieval.database.engine import create_engine, ensure_schema
from retrieval.store import ImageRecord, SearchScope
from retrieval.store.allowed import RECORD_COLUMNS
from retrieval.store.pgindex import Layout, index_name, sql_literal
from retrieval.store.postgres import (
    EF_SEARCH,
    OVERFETCH,
    PgVectorStore,
    search_settings,
    search_statement,
)
from tests.records import clustered, exact_top, near
from tests.textimages import WORDS

MODEL = "bench-model"
DIM = 512
CHANNELS = 50  # one channel of a guild holds 2% of its rows
DAY0 = datetime(2026, 1, 1, tzinfo=UTC)
CHUNK = 20_000  # rows per COPY
WRITER_GUILD = 10**9  # a guild of its own for the writes made during the builds


def zipf_sizes(n: int, guilds: int, largest_share: float = 0.2) -> np.ndarray:
    """Guild sizes proportional to rank^-a, with a chosen so the largest holds about
    ``largest_share`` of ``n``; every guild has at least one row."""
    ranks = np.arange(1, guilds + 1, dtype=np.float64)
    low, high = 0.0, 4.0
    for _ in range(60):
        a = (low + high) / 2
        share = 1 / np.sum(ranks**-a)
        low, high = (a, high) if share < largest_share else (low, a)
    sizes = np.maximum(1, np.round(n * ranks**-a / np.sum(ranks**-a))).astype(int)
    sizes[0] += n - sizes.sum()
    return sizes


def guild_vectors(guild_id: int, size: int) -> np.ndarray:
    # Each guild its own topics: clusters of its own, a hundred rows per cluster.
    return clustered(size, DIM, np.random.default_rng(guild_id), clusters=max(4, size // 100))


def records(guild_id: int, x: np.ndarray, first: int = 0) -> list[ImageRecord]:
    return [
        ImageRecord(
            guild_id=guild_id,
            channel_id=guild_id * 1000 + i % CHANNELS,
            message_id=guild_id * 10_000_000 + i,
            image_key=i,
            kind="attachment",
            author_id=guild_id * 100 + i % 7,
            posted_at=DAY0 + timedelta(minutes=i),
            filename=f"{i}.png",
            source_url=f"https://cdn.example/{guild_id}/{i}.png",
            content_type="image/png",
            content_hash=f"{guild_id}-{i}",
            model_id=MODEL,
            embedding=v,
        )
        for i, v in enumerate(x, start=first)
    ]


async def load(
    engine, sizes: np.ndarray, keep: set[int], worded: float = 0.0
) -> tuple[float, dict[int, np.ndarray], dict[int, list[str]]]:
    """COPY every guild's rows straight into images, words (as the OCR lane stores them) for a
    share ``worded`` of them; the vectors and the first captions of ``keep`` guilds back."""
    from pgvector.asyncpg import register_vector

    kept: dict[int, np.ndarray] = {}
    said: dict[int, list[str]] = {}
    started = time.perf_counter()
    pending: list[tuple] = []
    columns = [*RECORD_COLUMNS, "words"]
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        await register_vector(raw)

        async def flush() -> None:
            await raw.copy_records_to_table("images", records=pending, columns=columns)
            pending.clear()

        for rank, size in enumerate(sizes, start=1):
            x = guild_vectors(rank, int(size))
            if rank in keep:
                kept[rank] = x
            rng = random.Random(rank)
            for record in records(rank, x):
                words = caption(rng) if rng.random() < worded else None
                if words and rank in keep and len(said.setdefault(rank, [])) < 1_000:
                    said[rank].append(words)
                values = [getattr(record, name) for name in RECORD_COLUMNS]
                pending.append((*values, words))
            if len(pending) >= CHUNK:
                await flush()
        if pending:
            await flush()
        await conn.commit()
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.execute(text("VACUUM ANALYZE images"))
        # Its vector codec would clash with SQLAlchemy's (text): not back into the pool.
        await conn.invalidate()
    return time.perf_counter() - started, kept, said


@dataclass
class Writes:
    """Writes made while indexes are built: the longest wait of each kind."""

    single: float = 0.0
    batch: float = 0.0
    delete: float = 0.0
    rounds: int = 0


async def keep_writing(store: PgVectorStore, stop: asyncio.Event, out: Writes) -> None:
    x = clustered(100, DIM, np.random.default_rng(7))
    while not stop.is_set():
        started = time.perf_counter()
        await store.upsert(records(WRITER_GUILD, x[:1], first=out.rounds * 1000))
        middle = time.perf_counter()
        await store.upsert(records(WRITER_GUILD, x, first=out.rounds * 1000 + 1))
        end = time.perf_counter()
        ids = [WRITER_GUILD * 10_000_000 + out.rounds * 1000 + i for i in range(101)]
        await store.delete_messages(ids)
        done = time.perf_counter()
        out.single = max(out.single, middle - started)
        out.batch = max(out.batch, end - middle)
        out.delete = max(out.delete, done - end)
        out.rounds += 1
        await asyncio.sleep(0.05)


def classes(sizes: np.ndarray, layout: Layout) -> dict[str, int]:
    """Guild ids (ranks) of each size class."""
    indexed = [r for r, s in enumerate(sizes, start=1) if s >= layout.min_rows]
    exact = [r for r, s in enumerate(sizes, start=1) if s < layout.min_rows]
    chosen = {"largest": 1}
    if indexed:
        chosen["smallest indexed"] = indexed[-1]
    if exact:
        chosen["largest exact"] = exact[0]
    chosen["median"] = len(sizes) // 2
    return chosen


def recall(hits, truth: list[int]) -> float:
    return len({h.image_key for h in hits} & set(truth)) / len(truth)


async def search_figures(store, guild_id: int, x: np.ndarray, count: int) -> dict:
    rng = np.random.default_rng(guild_id + 1)
    queries = near(x, rng, count)
    channel = np.arange(len(x)) % CHANNELS == 0
    out = {}
    for name, scope, keep in (
        ("unfiltered", SearchScope(guild_id, MODEL), None),
        (
            "2% channel",
            SearchScope(guild_id, MODEL, channel_ids=frozenset({guild_id * 1000})),
            channel,
        ),
    ):
        for k in (10, 100):
            for q in queries[:3]:  # warm: the first searches after a build read it from disk
                await store.search(q, scope=scope, k=k)
            latencies, recalls = [], []
            for q in queries:
                started = time.perf_counter()
                hits = await store.search(q, scope=scope, k=k)
                latencies.append((time.perf_counter() - started) * 1000)
                truth = exact_top(x, q, k, keep)
                truth = truth[: min(k, int(len(x) if keep is None else keep.sum()))]
                recalls.append(recall(hits, truth) if truth else 1.0)
            out[(name, k)] = (np.percentile(latencies, 95), float(np.mean(recalls)))
    return out


async def words_figures(store, guild_id: int, x: np.ndarray, said: list[str], count: int) -> dict:
    """p95 of each kind of `/find` query (benchmarks/words_search.py), as `/find` asks the store
    for its first page in every channel of the guild: CLIP alone, and with the words."""
    rng = np.random.default_rng(guild_id + 2)
    probes = near(x, rng, count + 3)
    typed = pairs(said, count + 3, seed=guild_id) if said else []
    channels = [guild_id * 1000 + c for c in range(CHANNELS)]
    out = {}
    kinds = cases(store, guild_id=guild_id, probes=probes, typed=typed, channels=channels)
    for name, call in kinds.items():
        if name != "clip" and not said:
            continue
        for i in range(3):  # warm
            await call(count + i)
        latencies = []
        for i in range(count):
            started = time.perf_counter()
            await call(i)
            latencies.append((time.perf_counter() - started) * 1000)
        out[name] = (float(np.percentile(latencies, 50)), float(np.percentile(latencies, 95)))
    return out


async def explained_calls(store: PgVectorStore, call) -> list[str]:
    """EXPLAIN ANALYZE of each statement ``call()`` sends to the images table, as the store sent
    it (captured, then explained with its parameters, its settings applied first)."""
    sent: list = []

    def note(conn, cursor, statement, parameters, context, executemany):
        sent.append((statement, parameters))

    event.listen(store.engine.sync_engine, "before_cursor_execute", note)
    try:
        await call()
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", note)
    lines: list[str] = []
    async with store.engine.begin() as conn:
        for statement, parameters in sent:
            if "set_config(" in statement:
                await conn.exec_driver_sql(statement, parameters)
            elif re.search(r"\bimages\b", statement) and "vector_dims" not in statement:
                explain = f"EXPLAIN (ANALYZE, BUFFERS) {statement}"
                lines += (await conn.exec_driver_sql(explain, parameters)).scalars()
    return [re.sub(r"'(\{[0-9,]{60,}\}|\[[^\]]{60,}\])'", "'…'", line) for line in lines]


async def explained(store: PgVectorStore, guild_id: int, x: np.ndarray) -> list[str]:
    """EXPLAIN ANALYZE of one 2% channel search of the guild at k=100, planned as the store
    plans it (vector literals elided)."""
    scope = SearchScope(guild_id, MODEL, channel_ids=frozenset({guild_id * 1000}))
    query = near(x, np.random.default_rng(guild_id + 1), 1)[0]
    async with store.engine.begin() as conn:
        budget = await store._plan(conn, scope, 100)
        await conn.execute(search_settings(budget))
        stmt = search_statement(query, scope=scope, k=100, indexed=budget is not None)
        sql = stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        lines = (await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")).scalars()
        return [re.sub(r"'\[[^\]]*\]'", "'[…]'", line) for line in lines]


async def sizes_of(conn, names: list[str]) -> int:
    total = 0
    for name in names:
        size = await conn.scalar(text("SELECT pg_relation_size(to_regclass(:n))"), {"n": name})
        total += int(size or 0)
    return total


async def float32_index(engine, store: PgVectorStore, guild_id: int, x, count: int) -> dict:
    """The largest guild indexed in float32 too, searched through that index instead."""
    name = f"ix_bench_f32_{guild_id}"
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("SET maintenance_work_mem = '1GB'"))
        started = time.perf_counter()
        await conn.execute(
            text(
                f"CREATE INDEX {name} ON images USING hnsw ((embedding::vector({DIM}))"
                f" vector_cosine_ops) WHERE guild_id = {guild_id}"
                f" AND model_id = {sql_literal(MODEL)}"
            )
        )
        built = time.perf_counter() - started
        size = await sizes_of(conn, [name])
    f32 = PgVectorStore(engine, layout=Layout(halfvec=False), sweep=False)
    f32.indexes.note = lambda *args: None
    figures = await search_figures(f32, guild_id, x, count)
    await f32.close()
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f"DROP INDEX {name}"))
    return {"size": size, "build_s": built, "figures": figures}


async def column_sizes(engine, guild_id: int) -> tuple[int, int]:
    """The largest guild's rows copied with a float32 and with a half precision column."""
    out = []
    async with engine.begin() as conn:
        for kind in ("vector", "halfvec"):
            await conn.execute(
                text(
                    f"CREATE TABLE bench_{kind} AS SELECT id, guild_id, channel_id, message_id,"
                    f" image_key, kind, author_id, posted_at, filename, source_url, content_type,"
                    f" content_hash, model_id, embedding::{kind}({DIM}) AS embedding"
                    f" FROM images WHERE guild_id = {guild_id}"
                )
            )
            out.append(int(await conn.scalar(text(f"SELECT pg_table_size('bench_{kind}')"))))
            await conn.execute(text(f"DROP TABLE bench_{kind}"))
    return out[0], out[1]


async def partitioned(engine, sizes, kept: dict[int, np.ndarray], chosen, count: int) -> dict:
    """Layout (a): hash partitions by guild_id, an HNSW index per partition (all guilds)."""
    parts = 16
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(
            text(
                "CREATE TABLE parts (id bigint, guild_id bigint, channel_id bigint,"
                " image_key bigint, embedding vector) PARTITION BY HASH (guild_id)"
            )
        )
        for i in range(parts):
            await conn.execute(
                text(
                    f"CREATE TABLE parts_{i} PARTITION OF parts"
                    f" FOR VALUES WITH (MODULUS {parts}, REMAINDER {i})"
                )
            )
        await conn.execute(
            text(
                "INSERT INTO parts"
                " SELECT id, guild_id, channel_id, image_key, embedding FROM images"
            )
        )
        await conn.execute(text("CREATE INDEX ON parts (guild_id)"))
        await conn.execute(text("SET maintenance_work_mem = '1GB'"))
        started = time.perf_counter()
        await conn.execute(
            text(
                f"CREATE INDEX parts_hnsw ON parts USING hnsw ((embedding::halfvec({DIM}))"
                " halfvec_cosine_ops)"
            )
        )
        build_s = time.perf_counter() - started
        await conn.execute(text("ANALYZE parts"))
        size = int(
            await conn.scalar(
                text(
                    "SELECT sum(pg_relation_size(indexrelid)) FROM pg_index"
                    " WHERE indexrelid::regclass::text LIKE 'parts_%hnsw%'"
                    " OR indexrelid::regclass::text LIKE 'parts_%embedding%'"
                )
            )
            or 0
        )
    figures: dict = {}
    for cls, guild_id in chosen.items():
        x = kept[guild_id]
        queries = near(x, np.random.default_rng(guild_id + 1), count)
        channel = np.arange(len(x)) % CHANNELS == 0
        for name, chan, keep in (
            ("unfiltered", None, None),
            ("2% channel", guild_id * 1000, channel),
        ):
            for k in (10, 100):
                latencies, recalls, short = [], [], 0
                for q in queries:
                    where = f"guild_id = {guild_id}" + (f" AND channel_id = {chan}" if chan else "")
                    vec = "[" + ",".join(map(repr, q.tolist())) + "]"
                    sql = (
                        f"SELECT image_key, embedding::vector({DIM}) <=> '{vec}' AS d FROM ("
                        f"SELECT image_key, embedding FROM parts WHERE {where} ORDER BY"
                        f" embedding::halfvec({DIM}) <=> '{vec}'::halfvec({DIM})"
                        f" LIMIT {OVERFETCH * k}) c ORDER BY d LIMIT {k}"
                    )
                    started = time.perf_counter()
                    async with engine.begin() as c:
                        await c.execute(
                            text(
                                "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true),"
                                f" set_config('hnsw.ef_search', '{EF_SEARCH}', true)"
                            )
                        )
                        rows = (await c.execute(text(sql))).all()
                    latencies.append((time.perf_counter() - started) * 1000)
                    truth = exact_top(x, q, k, keep)
                    truth = truth[: min(k, int(len(x) if keep is None else keep.sum()))]
                    short += len(rows) < len(truth)
                    got = {r.image_key for r in rows}
                    recalls.append(len(got & set(truth)) / len(truth) if truth else 1.0)
                figures[(cls, name, k)] = (np.percentile(latencies, 95), np.mean(recalls), short)
    return {"build_s": build_s, "index_bytes": size, "figures": figures}


async def run(args) -> None:
    from benchmarks.store import postgres

    layout = Layout(
        min_rows=args.min_rows, drop_below=args.min_rows // 4, exact_max_rows=args.exact_max_rows
    )
    sizes = zipf_sizes(args.n, args.guilds)
    chosen = classes(sizes, layout)
    print(
        f"{args.n:,} vectors x {DIM} over {args.guilds} guilds (Zipf): largest {sizes[0]:,},"
        f" median {int(np.median(sizes)):,}; {int((sizes >= layout.min_rows).sum())} guilds"
        f" of >= {layout.min_rows:,} rows hold {int(sizes[sizes >= layout.min_rows].sum()):,}"
    )
    print("classes:", {c: (g, int(sizes[g - 1])) for c, g in chosen.items()}, flush=True)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    async with postgres(args.shared_buffers) as url:
        engine = create_engine(url)
        await ensure_schema(engine)
        if args.storage:
            async with engine.begin() as conn:
                await conn.execute(
                    text(f"ALTER TABLE images ALTER COLUMN embedding SET STORAGE {args.storage}")
                )
        load_s, kept, said = await load(engine, sizes, set(chosen.values()), args.worded)
        print(
            f"loaded by COPY in {load_s:.0f} s ({args.n / load_s:,.0f} rows/s),"
            f" words for {args.worded:.0%} of the images",
            flush=True,
        )

        if args.compare_layouts:
            a = await partitioned(engine, sizes, kept, chosen, args.queries)
            print(
                f"(a) partitioned: HNSW over all rows in {a['build_s']:.0f} s,"
                f" {a['index_bytes'] / 2**20:.0f} MB",
                flush=True,
            )

        store = PgVectorStore(engine, layout=layout, sweep=False)
        writer = PgVectorStore(engine, layout=layout, sweep=False)
        stop, writes = asyncio.Event(), Writes()
        writing = asyncio.create_task(keep_writing(writer, stop, writes))
        started = time.perf_counter()
        outcomes = await store.indexes.catch_up()
        build_s = time.perf_counter() - started
        stop.set()
        await writing
        await writer.close()
        print(
            f"(b) per-guild indexes: {outcomes} in {build_s:.0f} s; {writes.rounds} write"
            f" rounds meanwhile, longest wait: 1 row {writes.single * 1000:.0f} ms, 100 rows"
            f" {writes.batch * 1000:.0f} ms, delete 101 rows {writes.delete * 1000:.0f} ms",
            flush=True,
        )
        # Searches are measured in steady state: the vacuum that the builds' and writes' churn
        # would otherwise start in the background (HNSW indexes included), and the checkpoint
        # writing the builds out, are done first.
        started = time.perf_counter()
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE images"))
            await conn.execute(text("CHECKPOINT"))
        print(f"vacuum and checkpoint: {time.perf_counter() - started:.0f} s", flush=True)

        figures, worded = {}, {}
        searches_from = os.getloadavg()[0]  # other work on the machine moves p95 the most
        for cls, guild_id in chosen.items():
            if not args.words_only:
                figures[cls] = await search_figures(store, guild_id, kept[guild_id], args.queries)
            if args.worded:
                worded[cls] = await words_figures(
                    store, guild_id, kept[guild_id], said.get(guild_id, []), args.queries
                )
                print(f"{cls}: (p50, p95) {worded[cls]}, load {os.getloadavg()[0]:.2f}", flush=True)
        print(
            f"load average (1 min) as the searches began and ended:"
            f" {searches_from:.2f}, {os.getloadavg()[0]:.2f}"
        )
        plan = await explained(store, 1, kept[1]) if args.explain else []
        if args.explain and said.get(1):
            common = max(WORDS, key=lambda w: sum(w in c.split() for c in said[1]))
            pair = pairs(said[1], 1)[0]
            everywhere = frozenset(1000 + c for c in range(CHANNELS))
            scope = SearchScope(1, MODEL, channel_ids=everywhere)
            query = near(kept[1], np.random.default_rng(3), 1)[0]
            for phrases in ([common], pair.split()):
                plan += [f"\nthe largest guild's text side for {phrases}:"]
                plan += await explained_calls(
                    store, lambda p=phrases: store.words_matching(scope=scope, all_of=p, k=200)
                )
            quoted = dataclasses.replace(scope, words_all=(pair,))
            plan += [f"\nthe largest guild's CLIP side for '\"{pair}\"':"]
            plan += await explained_calls(store, lambda: store.search(query, scope=quoted, k=200))
        async with engine.connect() as conn:
            table = int(await conn.scalar(text("SELECT pg_table_size('images')")))
            names = (
                await conn.execute(
                    text("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'ix_images_ann_%'")
                )
            ).scalars()
            ann = await sizes_of(conn, list(names))
            btree = int(
                await conn.scalar(text("SELECT pg_relation_size('ix_images_guild_model_posted')"))
            )
            largest_half = await sizes_of(conn, [index_name(1, MODEL)])
        f32 = col_f32 = col_half = None
        if not args.no_precision:
            f32 = await float32_index(engine, store, 1, kept[1], args.queries)
            col_f32, col_half = await column_sizes(engine, 1)
        await store.close()
        await engine.dispose()

    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if worded:
        print(
            f"\n/find's first page (200 candidates, every channel of the guild), p50 / p95 ms,"
            f" {args.queries} queries each; words for {args.worded:.0%} of the images"
        )
        names = next(iter(worded.values()))
        print(f"{'class (rows)':28}" + "".join(f"{name:>16}" for name in names))
        for cls, guild_id in chosen.items():
            print(
                f"{cls + f' ({sizes[guild_id - 1]:,})':28}"
                + "".join(f"{p50:>8.1f} /{p95:>6.1f}" for p50, p95 in worded[cls].values())
            )
    if args.words_only:
        print("\n".join(plan))
        return
    print(f"\nper-guild layout, through the store (p95 ms / recall@k), {args.queries} queries each")
    print(
        f"{'class (rows)':28}{'unfiltered k=10':>18}{'k=100':>16}{'2% chan k=10':>16}{'k=100':>16}"
    )
    for cls, guild_id in chosen.items():
        f = figures[cls]
        cells = [f[(n, k)] for n in ("unfiltered", "2% channel") for k in (10, 100)]
        print(
            f"{cls + f' ({sizes[guild_id - 1]:,})':28}"
            + "".join(f"{p:>9.1f} / {r:.3f}" for p, r in cells)
        )
    print(f"searches that ran two scans: {store.two_scans}")
    if plan:
        print("\nthe largest guild, one channel (2%), k=100: EXPLAIN (ANALYZE, BUFFERS)")
        print("\n".join(plan))
    per_m = 1e6 / args.n
    print(
        f"\ntable (heap + TOAST) {table / 2**20:,.0f} MB = {table * per_m / 2**30:.2f} GB per"
        f" million; B-tree (guild_id, model_id, posted_at) {btree / 2**20:.0f} MB"
    )
    indexed_rows = int(sizes[sizes >= layout.min_rows].sum())
    print(
        f"HNSW halfvec, all guild indexes: {ann / 2**20:,.0f} MB for {indexed_rows:,} rows"
        f" = {ann / indexed_rows * 1e6 / 2**30:.2f} GB per million indexed"
    )
    if f32 is not None:
        print(
            f"largest guild ({sizes[0]:,}): halfvec index {largest_half / 2**20:.0f} MB,"
            f" float32 index {f32['size'] / 2**20:.0f} MB (built in {f32['build_s']:.0f} s)"
        )
        for key in (
            ("unfiltered", 10),
            ("unfiltered", 100),
            ("2% channel", 10),
            ("2% channel", 100),
        ):
            h, v = figures["largest"][key], f32["figures"][key]
            print(
                f"  {key[0]} k={key[1]}: halfvec {h[0]:.1f} ms / {h[1]:.3f},"
                f" float32 {v[0]:.1f} ms / {v[1]:.3f}"
            )
        print(
            f"largest guild's rows as a table: vector column {col_f32 / 2**20:.0f} MB,"
            f" halfvec column {col_half / 2**20:.0f} MB"
        )
    if args.compare_layouts:
        print(
            f"\n(a) hash partitions (16) by guild_id, HNSW per partition over every row:"
            f" built in {a['build_s']:.0f} s, {a['index_bytes'] / 2**20:.0f} MB;"
            f" (b) per-guild: {build_s:.0f} s, {ann / 2**20:.0f} MB"
        )
        print(f"{'class':28}{'':6}{'(a) p95 / recall / short':>30}{'(b) p95 / recall':>22}")
        for cls in chosen:
            for n in ("unfiltered", "2% channel"):
                for k in (10, 100):
                    p, r, short = a["figures"][(cls, n, k)]
                    pb, rb = figures[cls][(n, k)]
                    print(
                        f"{cls:18}{n:>12} k={k:<4}{p:>10.1f} / {r:.3f} / {short:>3}"
                        f"{pb:>12.1f} / {rb:.3f}"
                    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store --tenants")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--guilds", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--shared-buffers", default="4GB")
    parser.add_argument("--compare-layouts", action="store_true")
    parser.add_argument(
        "--no-precision", action="store_true", help="skip the float32 index and column copies"
    )
    parser.add_argument(
        "--explain", action="store_true", help="the plan of the largest guild's channel search"
    )
    parser.add_argument("--storage", choices=["main", "plain", "external"], help="embedding's")
    parser.add_argument(
        "--worded", type=float, default=0.0, help="share of images with words (e.g. 0.3)"
    )
    parser.add_argument(
        "--words-only", action="store_true", help="with --worded: only /find's figures"
    )
    parser.add_argument(
        "--min-rows", type=int, default=Layout().min_rows, help="a guild's own index from here"
    )
    parser.add_argument(
        "--exact-max-rows",
        type=int,
        default=Layout().exact_max_rows,
        help="filtered searches matching fewer rows are exact",
    )
    asyncio.run(run(parser.parse_args(argv)))
