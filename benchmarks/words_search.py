"""Searching by the words inside pictures: latency of /find's store work on one large server.

One server of ``--n`` images (SQLite, or PostgreSQL with ``--postgres``), clustered 512-d vectors,
words for ``--worded`` of them (2-6 lines of 3-7 words drawn from tests/textimages.py's words, as
OCR stores them), analyzed. Each query, as `/find` asks the store for its first page's 200
candidates (retrieval/search/pager.py's CANDIDATES), timed over ``--queries`` queries after one
warm-up each:

- clip: a plain description no text holds (CLIP alone, as before words existed);
- hybrid: two words some pictures say: CLIP beside the text, fused (`Question.search`);
- quoted: a quoted two-word phrase: CLIP filtered to the pictures saying it, plus the text side;
- excluded: a description and a ``-word``: CLIP with the word's pictures left out.

Every search is in every channel of the server, as for a member who reads them all.

    python -m benchmarks.words_search [--n 100000] [--worded 0.3] [--queries 50] [--postgres]
        [--baseline REV]

Each version runs in its own process on the same database: this checkout's, and with
``--baseline REV`` that git revision's product code too (exported with ``git archive``), every
query asked of both in turn, the one going first alternating, so that the machine's load falls
on both alike. Wall time, and the CPU time of the version's process (all its threads: the
client's share, which the machine's load does not inflate; PostgreSQL's own is not in it).
"same top 10": queries whose first ten rows were the same in every version.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from asyncio.subprocess import PIPE
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.harness import ROOT, export, percentile
from retrieval.database.engine import create_engine, ensure_schema
from retrieval.search import Question, parse_words
from retrieval.store import SearchScope, open_store
from tests.records import clustered, near
from tests.textimages import WORDS

GUILD, MODEL, DIM, CANDIDATES = 1, "bench-model", 512, 200
CHANNELS = range(100, 150)  # every channel of the server: a member who reads them all


def caption(rng: random.Random) -> str:
    lines = rng.randint(2, 6)
    return "\n".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))) for _ in range(lines)
    )


# Captions stored, for queries of words that pictures do say.
SAID: list[str] = []


def rows(n: int, worded: float, seed: int = 5):
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    vectors = clustered(n, DIM, np_rng)
    for i in range(n):
        words = caption(rng) if rng.random() < worded else None
        if words and len(SAID) < 1_000:
            SAID.append(words)
        yield (
            GUILD, 100 + i % 50, 10_000 + i, i, "attachment", 70 + i % 97,
            f"2026-01-01 00:00:{i % 60:02d}.000000", f"{i}.png", f"https://cdn.example/{i}.png",
            "image/png", f"h{i}", MODEL, vectors[i].tobytes(), words,
        )  # fmt: skip


_INSERT = (
    "INSERT INTO images (guild_id, channel_id, message_id, image_key, kind, author_id, posted_at, "
    "filename, source_url, content_type, content_hash, model_id, embedding, words) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


async def fill_sqlite(path: Path, n: int, worded: float) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await ensure_schema(engine)
    await engine.dispose()
    with sqlite3.connect(path) as conn:  # the driver directly: 100k rows in seconds
        conn.executemany(_INSERT, rows(n, worded))
        conn.execute("INSERT INTO author_guilds SELECT DISTINCT author_id, guild_id FROM images")
        conn.execute("ANALYZE")


async def fill_postgres(engine, n: int, worded: float) -> None:
    from datetime import UTC, datetime

    from pgvector.asyncpg import register_vector

    columns = [
        "guild_id", "channel_id", "message_id", "image_key", "kind", "author_id", "posted_at",
        "filename", "source_url", "content_type", "content_hash", "model_id", "embedding", "words",
    ]  # fmt: skip
    posted = datetime(2026, 1, 1, tzinfo=UTC)
    records = [
        (*r[:6], posted, *r[7:12], np.frombuffer(r[12], np.float32), r[13]) for r in rows(n, worded)
    ]
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        await register_vector(raw)
        await raw.copy_records_to_table("images", records=records, columns=columns)
        await raw.execute(
            "INSERT INTO author_guilds SELECT DISTINCT author_id, guild_id FROM images"
        )
        # Steady state, as autovacuum keeps a live table: statistics, and pages all visible.
        await raw.execute("VACUUM ANALYZE")
        # Its vector codec would clash with SQLAlchemy's (text): not back into the pool.
        await conn.invalidate()


def pairs(said: Sequence[str], count: int, seed: int = 3) -> list[str]:
    """Two words one picture says, side by side (as a member remembers them), ``count`` times."""
    pick = random.Random(seed)
    lines = [pick.choice(pick.choice(said).splitlines()).split() for _ in range(count)]
    return [" ".join(line[(at := pick.randrange(len(line) - 1)) : at + 2]) for line in lines]


def cases(store, *, guild_id: int, probes, typed: Sequence[str], channels) -> dict:
    """Each kind of query as `/find` asks the store for its first page, by query number."""
    scope = SearchScope(guild_id, MODEL, channel_ids=frozenset(channels))

    def asked(i: int, query: str):
        words = parse_words(query)
        filtered = SearchScope(guild_id, MODEL, words_all=words.phrases, words_none=words.excluded)
        return Question(store, probes[i], filtered, words=words).search(channels, CANDIDATES)

    return {
        "clip": lambda i: store.search(probes[i], scope=scope, k=CANDIDATES),
        "hybrid": lambda i: asked(i, typed[i]),
        "quoted": lambda i: asked(i, f'"{typed[i]}"'),
        "excluded": lambda i: asked(i, f"picture -{typed[i].split()[0]}"),
    }


# -- one version's process, and the runs side by side --------------------------------------------


async def serve(url: str, plan: Path) -> None:
    """Answer ``<case> <query number>`` lines on stdin with one JSON line each: the store work's
    milliseconds, the rows returned and the first ten row ids."""
    given = np.load(plan)
    probes, typed = given["probes"], [str(t) for t in given["typed"]]
    engine = create_engine(url)
    store = open_store(engine)
    kinds = cases(store, guild_id=GUILD, probes=probes, typed=typed, channels=CHANNELS)
    while line := await asyncio.to_thread(sys.stdin.readline):
        name, i = line.split()
        started, cpu = time.perf_counter(), time.process_time()
        hits = await kinds[name](int(i))
        took = (time.perf_counter() - started) * 1000
        cpu = (time.process_time() - cpu) * 1000
        top = [h.row_id for h in hits[:10]]
        print(json.dumps({"ms": took, "cpu": cpu, "n": len(hits), "top": top}))
        sys.stdout.flush()
    await store.close()
    await engine.dispose()


async def side_by_side(url: str, versions: dict[str, Path], queries: int, tmp: Path) -> None:
    """Each version in its own process on the same database; every query asked of each in
    turn (which one goes first alternates), after a warm-up query of each kind."""
    rng = np.random.default_rng(9)
    plan = tmp / "plan.npz"
    probes = near(clustered(2_000, DIM, rng), rng, queries + 1)
    np.savez(plan, probes=probes, typed=np.array(pairs(SAID, queries + 1)))
    workers = {}
    for name, code in versions.items():
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(ROOT)])}
        workers[name] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.words_search", "--serve", url, "--plan", str(plan),
            stdin=PIPE, stdout=PIPE, env=env, cwd=tmp,
        )  # fmt: skip

    async def ask(name: str, case: str, i: int) -> dict:
        worker = workers[name]
        worker.stdin.write(f"{case} {i}\n".encode())
        await worker.stdin.drain()
        return json.loads(await worker.stdout.readline())

    names = list(versions)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    heading = "".join(f"{n[:30]:>32}" for n in names)
    print(f"{'query':10}{heading}   results  same top 10")
    print(f"{'':10}" + f"{'wall p50 / p95, CPU p50 ms':>32}" * len(names))
    for case in ("clip", "hybrid", "quoted", "excluded"):
        for name in names:
            await ask(name, case, queries)  # warm-up: the matrix or the index read in
        times: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        found: dict[str, int] = dict.fromkeys(names, 0)
        same = 0
        for i in range(queries):
            answers = {}
            for name in names if i % 2 == 0 else reversed(names):
                answers[name] = await ask(name, case, i)
                times[name].append(answers[name]["ms"])
                cpu[name].append(answers[name]["cpu"])
                found[name] += answers[name]["n"]
            same += len({tuple(a["top"]) for a in answers.values()}) == 1
        cells = []
        for name in names:
            ms, used = sorted(times[name]), sorted(cpu[name])
            p50, p95, p50_cpu = percentile(ms, 0.5), percentile(ms, 0.95), percentile(used, 0.5)
            cells.append(f"{p50:8.1f} / {p95:6.1f}, {p50_cpu:5.1f}")
        counts = "/".join(str(found[name] // queries) for name in names)
        print(
            f"{case:10}" + "".join(f"{c:>24}" for c in cells) + f"{counts:>10}{same:>6}/{queries}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    for worker in workers.values():
        worker.stdin.close()
        await worker.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--worded", type=float, default=0.3)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--baseline", help="a git revision to measure too, e.g. main")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        await serve(args.serve, Path(args.plan))
        return
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"this checkout": ROOT}
        if args.baseline:
            versions = {args.baseline: export(args.baseline, Path(tmp) / "baseline"), **versions}
        if args.postgres:
            from tests.conftest import embedded_server, fresh_database

            with embedded_server("words-bench-", citus=False) as server:
                async with fresh_database(server, citus=False) as engine:
                    started = time.perf_counter()
                    await fill_postgres(engine, args.n, args.worded)
                    took = time.perf_counter() - started
                    print(f"PostgreSQL: {args.n} images filled in {took:.0f}s")
                    store = open_store(engine)
                    started = time.perf_counter()
                    built = await store.indexes.check(GUILD, MODEL)
                    print(f"HNSW index: {built} in {time.perf_counter() - started:.0f}s")
                    await store.close()
                    url = engine.url.render_as_string(hide_password=False)
                    await side_by_side(url, versions, args.queries, Path(tmp))
            return
        path = Path(tmp) / "words.db"
        started = time.perf_counter()
        await fill_sqlite(path, args.n, args.worded)
        print(f"SQLite: {args.n} images filled in {time.perf_counter() - started:.0f}s")
        await side_by_side(f"sqlite+aiosqlite:///{path}", versions, args.queries, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
