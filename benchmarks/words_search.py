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

    python -m benchmarks.words_search [--n 100000] [--worded 0.3] [--queries 50] [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.harness import percentile
from retrieval.database.engine import create_engine, ensure_schema
from retrieval.search import Question, parse_words
from retrieval.store import SearchScope, open_store
from tests.records import clustered, near
from tests.textimages import WORDS

GUILD, MODEL, DIM, CANDIDATES = 1, "bench-model", 512, 200


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
        await raw.execute("ANALYZE")
        # Its vector codec would clash with SQLAlchemy's (text): not back into the pool.
        await conn.invalidate()


async def timed(call, queries: int) -> tuple[float, float, int]:
    await call(0)  # warm-up: the matrix or the index loaded
    seconds, found = [], 0
    for i in range(queries):
        started = time.perf_counter()
        found += len(await call(i))
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return percentile(seconds, 0.5) * 1000, percentile(seconds, 0.95) * 1000, found // queries


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


async def measure(store, queries: int) -> None:
    rng = np.random.default_rng(9)
    probes = near(clustered(2_000, DIM, rng), rng, queries + 1)
    typed = pairs(SAID, queries + 1)
    channels = range(100, 150)
    print(f"{'query':10} {'p50 ms':>8} {'p95 ms':>8} {'results':>8}")
    for name, call in cases(
        store, guild_id=GUILD, probes=probes, typed=typed, channels=channels
    ).items():
        p50, p95, found = await timed(call, queries)
        print(f"{name:10} {p50:8.1f} {p95:8.1f} {found:8d}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--worded", type=float, default=0.3)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
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
                    await measure(store, args.queries)
                    await store.close()
            return
        path = Path(tmp) / "words.db"
        started = time.perf_counter()
        await fill_sqlite(path, args.n, args.worded)
        print(f"SQLite: {args.n} images filled in {time.perf_counter() - started:.0f}s")
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        store = open_store(engine)
        await measure(store, args.queries)
        await store.close()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
