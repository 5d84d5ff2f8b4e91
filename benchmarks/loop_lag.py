"""Event-loop lag while a large guild's SQLite matrix loads and a search pages 100 results deep.

Builds a throwaway SQLite database with one guild of N clustered vectors (1% of them reposts),
then, in a fresh process per version of the code, loads it through the store and pages through
`ResultPager` with the real arranger, while a probe coroutine measures how late a 5 ms sleep
wakes up. Each process first imports what the bot runs with (torch, open_clip, discord.py and
the bot) and does what that version's bot does once started, so the garbage collector has the
bot's heap to scan. The asking member may read a fifth of the channels, so the pager fetches
200, 400 and then 800 candidates, as a deep page does. Every version must show the same results.

    python -m benchmarks.loop_lag [--rows 1000000] [--dim 512] [--baseline main]

``--baseline REV`` measures that git revision's code too (exported with ``git archive``), side
by side on the same database. The database lives in /tmp and is deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from benchmarks.harness import RAW_INSERT, ROOT, export, raw_sqlite, run_version

GUILD, MODEL = 1, "bench-model"
CHANNELS = 31
VISIBLE = frozenset(range(100, 100 + CHANNELS // 5))  # the channels the asker may read
DEPTH, PAGE_SIZE = 100, 10
PROBE_S = 0.005
WRITE_BATCH = 50_000
DAY0 = datetime(2024, 1, 1, tzinfo=UTC)


# -- the database ------------------------------------------------------------------------------


def vectors(start: int, count: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows ``start``… of clustered unit vectors; every 100th re-encodes the row before it."""
    x = centres[rng.integers(0, len(centres), count)]
    x += 0.6 * rng.normal(size=x.shape).astype(np.float32)
    reposts = np.flatnonzero((np.arange(start, start + count) % 100 == 99)[1:]) + 1
    x[reposts] = x[reposts - 1] + 0.01 * rng.normal(size=(len(reposts), x.shape[1]))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def build(path: Path, rows: int, dim: int) -> np.ndarray:
    """The database, written as fast as SQLite takes it; returns a query vector."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(max(10, rows // 100), dim)).astype(np.float32)
    db = raw_sqlite(path)
    query = None
    for start in range(0, rows, WRITE_BATCH):
        x = vectors(start, min(WRITE_BATCH, rows - start), centres, rng)
        if query is None:  # near row 98, whose row 99 is its repost, in a channel the asker reads
            query = x[98] + 0.5 * rng.normal(size=dim).astype(np.float32) / np.sqrt(dim)
        values = []
        for offset, vector in enumerate(x):
            i = start + offset
            posted = DAY0 + timedelta(seconds=i * 37, microseconds=i % 1_000_000)
            # Every other repost is the same file posted again.
            same = i % 200 == 199
            values.append(
                (
                    GUILD,
                    100 + i % CHANNELS,
                    10_000_000 + i,
                    i,
                    70 + i % 97,
                    posted.strftime("%Y-%m-%d %H:%M:%S.%f"),
                    f"img{i}.png",
                    f"https://cdn.example/attachments/{i}.png",
                    f"hash{i - 1 if same else i}",
                    MODEL,
                    vector.tobytes(),
                )
            )
        with db:
            db.executemany(RAW_INSERT, values)
        print(f"  {start + len(x):,} rows written", end="\r", flush=True)
    db.close()
    print()
    return (query / np.linalg.norm(query)).astype(np.float32)


# -- one measurement, in its own process ---------------------------------------------------------


def lag_stats(lags: list[float]) -> dict:
    ordered = sorted(lags) or [0.0]
    return {
        "samples": len(ordered),
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max": ordered[-1],
    }


def bot_heap() -> None:
    """The bot's process as it runs: its libraries imported, then its start-up done."""
    import discord  # noqa: F401
    import open_clip  # noqa: F401
    import torch  # noqa: F401

    import bot.client

    # Versions before bot.client.freeze_heap left the start-up objects to the collector.
    if (freeze := getattr(bot.client, "freeze_heap", None)) is not None:
        freeze()


async def measure(path: str, query: np.ndarray) -> dict:
    import retrieval
    from retrieval.database.engine import create_engine
    from retrieval.search import ResultPager, arranger, collapse_reposts, from_store, ordered
    from retrieval.store import SearchScope, open_store

    lags: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(PROBE_S)
            lags.append((time.perf_counter() - before - PROBE_S) * 1000)

    async def confirm(hits) -> list[bool]:
        await asyncio.sleep(0)
        return [h.channel_id in VISIBLE for h in hits]

    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    store = open_store(engine)
    scope = SearchScope(guild_id=GUILD, model_id=MODEL)
    watcher = asyncio.create_task(probe())
    await asyncio.sleep(0.2)
    lags.clear()
    started = time.perf_counter()
    await store.search(query, scope=scope, k=10)  # loads the guild's matrix
    load_s = time.perf_counter() - started
    load_lags, lags[:] = list(lags), []

    fetched: list[int] = []
    search = from_store(store, query, scope)

    async def fetch(k: int):
        fetched.append(k)
        return await search(k)

    pager = ResultPager(
        fetch=fetch,
        confirm=confirm,
        screen=confirm,
        page_size=PAGE_SIZE,
        arrange=arranger(store, "relevance"),
    )
    started = time.perf_counter()
    # The member presses ▶ until 100 results were shown (a short page is asked again).
    pages: list[list] = []
    while sum(map(len, pages)) < DEPTH:
        at = len(pages) - 1 if pages and len(pages[-1]) < PAGE_SIZE else len(pages)
        groups = await pager.page(at)
        pages[at:] = [groups]
        if len(groups) < PAGE_SIZE and not pager.may_have_more:
            break
    shown = [group for page in pages for group in page]
    paging_s = time.perf_counter() - started
    paging_lags, lags[:] = list(lags), []

    # A new image once the guild is loaded: its row joins the matrix, which is full.
    vector = np.zeros_like(query)
    vector[0] = 1.0
    await store.upsert([new_image(vector)])
    await asyncio.sleep(0.05)
    insert_lags = list(lags)
    stop.set()
    await watcher

    # Repost grouping alone, the CPU work that grows with the square of the candidates.
    hits = await store.search(query, scope=scope, k=800)
    vectors = await store.vectors([h.row_id for h in hits])
    grouping = []
    for count in (200, 400, 800):
        ranked = ordered(hits[:count], "relevance")
        started = time.perf_counter()
        collapse_reposts(ranked, vectors)
        grouping.append((time.perf_counter() - started) * 1000)
    await store.close()
    await engine.dispose()
    fingerprint = [(g.hit.row_id, [h.row_id for h in g.reposts]) for g in shown]
    return {
        "code": str(Path(retrieval.__file__).parent.parent),
        "load_s": load_s,
        "load": lag_stats(load_lags),
        "paging_s": paging_s,
        "paging": lag_stats(paging_lags),
        "insert": lag_stats(insert_lags),
        "shown": len(shown),
        "reposts": sum(len(g.reposts) for g in shown),
        "fetched": fetched,
        "grouping_ms": grouping,
        "results": hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()[:12],
    }


def new_image(vector: np.ndarray):
    from retrieval.store import ImageRecord

    return ImageRecord(
        guild_id=GUILD,
        channel_id=100,
        message_id=1,
        image_key=1,
        kind="attachment",
        author_id=70,
        posted_at=datetime.now(UTC),
        filename="new.png",
        source_url="https://cdn.example/attachments/new.png",
        content_type="image/png",
        content_hash="new",
        model_id=MODEL,
        embedding=vector,
    )


def report(rows: int, dim: int, results: dict[str, dict]) -> None:
    names = list(results)
    probe = f"{PROBE_S * 1000:.0f} ms"
    print(f"\n{rows:,} x {dim} clustered vectors, one guild; lag of a {probe} probe")
    print(f"{'':44}" + "".join(f"{name:>24}" for name in names))

    def line(label: str, cell) -> None:
        print(f"{label:44}" + "".join(f"{cell(results[name]):>24}" for name in names))

    line("load (first search)", lambda r: f"{r['load_s']:.2f} s")
    phases = {"load": "load", "paging": "paging", "insert": "1 new image, matrix full"}
    for phase, label in phases.items():
        line(f"  {label}: lag p50/p99/max", lambda r, p=phase: lags(r[p]))
    line(f"paging {DEPTH} results deep", lambda r: f"{r['paging_s']:.2f} s")
    line("candidates fetched", lambda r: "/".join(map(str, r["fetched"])))
    line(
        "repost grouping, 200/400/800",
        lambda r: " / ".join(f"{ms:.0f}" for ms in r["grouping_ms"]) + " ms",
    )
    line("results shown (reposts)", lambda r: f"{r['shown']} ({r['reposts']})")
    line("results fingerprint", lambda r: r["results"])
    for name in names:
        print(f"{name}: {results[name]['code']}")


def lags(stats: dict) -> str:
    return f"{stats['p50']:.1f} / {stats['p99']:.1f} / {stats['max']:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--baseline", help="a git revision to measure too, e.g. main")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--query", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        query = np.frombuffer(bytes.fromhex(args.query), dtype=np.float32)
        bot_heap()
        print(json.dumps(asyncio.run(measure(args.measure, query))))
        return

    tmp = Path(tempfile.mkdtemp(prefix="clipfind-loop-lag-", dir="/tmp"))
    try:
        db = tmp / "bench.db"
        started = time.perf_counter()
        query = build(db, args.rows, args.dim)
        print(f"database: {time.perf_counter() - started:.0f} s", flush=True)
        versions = {"this checkout": ROOT}
        if args.baseline:
            versions = {args.baseline: export(args.baseline, tmp / "baseline"), **versions}
        results = {}
        for name, code in versions.items():
            print(f"measuring {name} …", flush=True)
            options = ["--measure", str(db), "--query", query.tobytes().hex()]
            results[name] = run_version(code, "benchmarks.loop_lag", options)
        report(args.rows, args.dim, results)
        if len({r["results"] for r in results.values()}) > 1:
            print("\nThe versions showed different results.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
