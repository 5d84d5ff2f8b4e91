"""SQLite search for the largest server under MATRIX_MEMORY_MB: float32 matrix, 16-bit matrix
and sqlite-vec side by side.

Builds a throwaway SQLite database (in /tmp, deleted afterwards): one guild of ``--rows``
clustered 512-d vectors in 50 channels (one channel is 2% of the rows) and ``--others`` guilds
of ``--other-rows``. Each way runs in its own process, so its memory is its own:

- the matrix (float32, and 16-bit as the store keeps it by default), through the store API the
  bot uses: the first search loads the guild; p50/p95 at k = 10 and 100, unfiltered and one
  channel; recall@k against exact float32 search; the matrix's bytes and the process's RSS; then
  a budget that holds the large guild and one other, the other guilds searched in turn (the
  large one is evicted), the large one searched again (its reload) while the loaded bytes are
  checked against the budget after every search;
- the store with a budget too small for the guild: searched straight from SQLite in chunks;
- sqlite-vec's `vec0` table (cosine, guild as partition key, channel as metadata column) built
  from the same rows, the KNN statement alone timed; and its scalar `vec_distance_cosine` over
  the stored BLOBs, a few queries.
- the bare product over the large guild's vectors kept as float32, 16-bit fixed point (the
  matrix's compact form), float16 turned into float32 block by block, and numpy's float16.

    python -m benchmarks.sqlite_memory [--rows 200000] [--others 4] [--other-rows 50000]

sqlite-vec needs `pip install sqlite-vec pysqlite3-binary` (Python's own sqlite3 here cannot
load extensions); without them that column is left out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from benchmarks.harness import RAW_INSERT, raw_sqlite

GUILD, MODEL, DIM = 1, "bench-model", 512
CHANNELS = 50  # one channel holds 2% of a guild's rows
FILTER_CHANNEL = 100
WRITE_BATCH = 20_000
DAY0 = datetime(2024, 1, 1, tzinfo=UTC)
CASES = [(k, filtered) for filtered in (False, True) for k in (10, 100)]


def case_name(k: int, filtered: bool) -> str:
    return f"k={k} {'1 channel (2%)' if filtered else 'unfiltered'}"


# -- the database ------------------------------------------------------------------------------


def guild_vectors(guild_id: int, rows: int) -> np.ndarray:
    from tests.records import clustered

    return clustered(rows, DIM, np.random.default_rng(guild_id), clusters=max(10, rows // 1000))


def queries(x: np.ndarray, count: int) -> np.ndarray:
    from tests.records import near

    return near(x, np.random.default_rng(12345), count).astype(np.float32)


def build(path: Path, guilds: dict[int, int]) -> None:
    db = raw_sqlite(path)
    for guild_id, rows in guilds.items():
        x = guild_vectors(guild_id, rows)
        for start in range(0, rows, WRITE_BATCH):
            values = []
            for i in range(start, min(rows, start + WRITE_BATCH)):
                posted = DAY0 + timedelta(seconds=i * 37)
                values.append(
                    (
                        guild_id,
                        FILTER_CHANNEL + i % CHANNELS,
                        guild_id * 10_000_000 + i,
                        i,
                        70 + i % 97,
                        posted.strftime("%Y-%m-%d %H:%M:%S.%f"),
                        f"img{i}.png",
                        f"https://cdn.example/attachments/{guild_id}/{i}.png",
                        f"hash{guild_id}-{i}",
                        MODEL,
                        x[i].tobytes(),
                    )
                )
            with db:
                db.executemany(RAW_INSERT, values)
    db.close()


def truth(x: np.ndarray, q: np.ndarray, k: int, filtered: bool) -> set[int]:
    scores = x @ q
    if filtered:
        scores = np.where(np.arange(len(x)) % CHANNELS == 0, scores, -np.inf)
    return set(np.argpartition(-scores, k)[:k].tolist())


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentiles(latencies: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(np.array(latencies) * 1000, [50, 95])
    return float(p50), float(p95)


# -- one way, in its own process ----------------------------------------------------------------


async def run_matrix(
    path: str, args: argparse.Namespace, *, half: bool, streamed: bool = False
) -> dict:
    from retrieval.database.engine import create_engine
    from retrieval.store import SearchScope
    from retrieval.store.matrix import matrix_bytes
    from retrieval.store.sqlite import SqliteVectorStore

    x = guild_vectors(GUILD, args.rows)
    # Streamed: a budget too small for the guild, so every search reads it from SQLite.
    qs = queries(x, 5 if streamed else args.queries)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    budget_mb = 1 if streamed else args.budget_mb
    store = SqliteVectorStore(engine, matrix_memory_mb=budget_mb, half=half)
    out: dict = {}
    everything = SearchScope(GUILD, MODEL)
    one_channel = SearchScope(GUILD, MODEL, channel_ids=frozenset({FILTER_CHANNEL}))
    before = rss_mb()
    started = time.perf_counter()
    await store.search(qs[0], scope=everything, k=10)
    out["load_s"] = time.perf_counter() - started
    out["matrix_mb"] = store.matrices.used_bytes / 2**20
    out["rss_growth_mb"] = rss_mb() - before
    for k, filtered in CASES:
        latencies, recalls = [], []
        for q in qs:
            started = time.perf_counter()
            hits = await store.search(q, scope=one_channel if filtered else everything, k=k)
            latencies.append(time.perf_counter() - started)
            found = {h.message_id - GUILD * 10_000_000 for h in hits}
            recalls.append(len(found & truth(x, q, k, filtered)) / k)
        out[case_name(k, filtered)] = (*percentiles(latencies), float(np.mean(recalls)))
    await store.close()
    if streamed:
        await engine.dispose()
        return out

    # Eviction: room for the large guild and one other; the others searched in turn evict it.
    large = matrix_bytes(rows=args.rows, dim=DIM, half=half)
    other = matrix_bytes(rows=args.other_rows, dim=DIM, half=half)
    budget_mb = (large + 1.5 * other) / 2**20
    store = SqliteVectorStore(engine, matrix_memory_mb=budget_mb, half=half)
    highest = 0
    await store.search(qs[0], scope=everything, k=10)
    for guild_id in range(2, 2 + args.others):
        await store.search(qs[0], scope=SearchScope(guild_id, MODEL), k=10)
        highest = max(highest, store.matrices.used_bytes)
    evicted = (GUILD, MODEL) not in store.matrices
    started = time.perf_counter()
    await store.search(qs[1], scope=everything, k=10)
    out["reload_s"] = time.perf_counter() - started
    highest = max(highest, store.matrices.used_bytes)
    out["eviction"] = {
        "budget_mb": budget_mb,
        "highest_loaded_mb": highest / 2**20,
        "large_guild_evicted": evicted,
        "evictions": store.matrices.evictions,
    }
    await store.close()
    await engine.dispose()
    return out


def run_sqlite_vec(path: str, args: argparse.Namespace) -> dict:
    import pysqlite3.dbapi2 as sqlite_ext  # Python's own sqlite3 cannot load extensions here
    import sqlite_vec

    x = guild_vectors(GUILD, args.rows)
    qs = queries(x, args.queries)
    db = sqlite_ext.connect(path)
    db.enable_load_extension(True)
    sqlite_vec.load(db)
    out: dict = {"version": db.execute("SELECT vec_version()").fetchone()[0]}
    size = Path(path).stat().st_size
    started = time.perf_counter()
    db.execute(
        "CREATE VIRTUAL TABLE vec_images USING vec0(image_id INTEGER PRIMARY KEY, "
        "guild_id INTEGER PARTITION KEY, channel_id INTEGER, "
        f"embedding FLOAT[{DIM}] distance_metric=cosine)"
    )
    with db:
        db.execute(
            "INSERT INTO vec_images (image_id, guild_id, channel_id, embedding) "
            "SELECT id, guild_id, channel_id, embedding FROM images WHERE model_id = ?",
            (MODEL,),
        )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    out["build_s"] = time.perf_counter() - started
    out["table_mb"] = (Path(path).stat().st_size - size) / 2**20
    db.close()

    db = sqlite_ext.connect(path)  # a fresh connection: what a restart or a reload would do
    db.enable_load_extension(True)
    sqlite_vec.load(db)
    ids = dict(db.execute("SELECT id, image_key FROM images WHERE guild_id = ?", (GUILD,)))
    before = rss_mb()
    knn = (
        "SELECT image_id, distance FROM vec_images WHERE embedding MATCH ? AND k = ? "
        "AND guild_id = ?"
    )
    started = time.perf_counter()
    db.execute(knn, (qs[0].tobytes(), 10, GUILD)).fetchall()
    out["first_query_s"] = time.perf_counter() - started
    for k, filtered in CASES:
        latencies, recalls = [], []
        for q in qs:
            started = time.perf_counter()
            if filtered:
                rows = db.execute(
                    knn + " AND channel_id = ?", (q.tobytes(), k, GUILD, FILTER_CHANNEL)
                ).fetchall()
            else:
                rows = db.execute(knn, (q.tobytes(), k, GUILD)).fetchall()
            latencies.append(time.perf_counter() - started)
            found = {ids[row_id] for row_id, _ in rows}
            recalls.append(len(found & truth(x, q, k, filtered)) / k)
        out[case_name(k, filtered)] = (*percentiles(latencies), float(np.mean(recalls)))
    out["rss_growth_mb"] = rss_mb() - before

    scalar = (
        "SELECT id, vec_distance_cosine(embedding, ?) AS d FROM images "
        "WHERE guild_id = ? AND model_id = ? ORDER BY d LIMIT 10"
    )
    latencies = []
    for q in qs[:5]:
        started = time.perf_counter()
        db.execute(scalar, (q.tobytes(), GUILD, MODEL)).fetchall()
        latencies.append(time.perf_counter() - started)
    out["scalar_p50_ms"] = percentiles(latencies)[0]
    db.close()
    return out


def run_products(args: argparse.Namespace) -> dict:
    """The bare product over the large guild, by how the vectors are stored (no store, no
    filter): why the matrix keeps float32 and, when short of room, 16-bit fixed point rather
    than numpy's float16."""
    from retrieval.store.matrix import _BLOCK, GuildMatrix

    x = guild_vectors(GUILD, args.rows)
    qs = queries(x, 20)
    halves = x.astype(np.float16)
    fixed = GuildMatrix(0, capacity=len(x), half=True)
    fixed.append(
        ids=np.arange(len(x)),
        channels=np.zeros(len(x)),
        authors=np.zeros(len(x)),
        posted=np.zeros(len(x)),
        vectors=x,
    )

    def float16_blocks(q: np.ndarray) -> np.ndarray:
        block = np.empty((_BLOCK, DIM), dtype=np.float32)
        scores = np.empty(len(x), dtype=np.float32)
        for start in range(0, len(x), _BLOCK):
            part = block[: min(_BLOCK, len(x) - start)]
            part[...] = halves[start : start + len(part)]
            np.matmul(part, q, out=scores[start : start + len(part)])
        return scores

    ways = {
        "float32": lambda q: x @ q,
        "16-bit fixed point, blocks to float32": lambda q: fixed._scores(q, None),
        "float16, blocks to float32": float16_blocks,
        "float16 (numpy matmul)": lambda q: halves @ q.astype(np.float16),
    }
    out = {}
    for name, product in ways.items():
        product(qs[0])
        latencies, recalls = [], []
        for q in qs[: 5 if "numpy" in name else len(qs)]:
            started = time.perf_counter()
            scores = product(q)
            latencies.append(time.perf_counter() - started)
            found = set(np.argpartition(-np.asarray(scores, np.float32), 10)[:10].tolist())
            recalls.append(len(found & truth(x, q, 10, False)) / 10)
        out[name] = (*percentiles(latencies), float(np.mean(recalls)))
    return out


def child(way: str, path: str, args: argparse.Namespace) -> None:
    if way == "products":
        result = run_products(args)
    elif way == "sqlite-vec":
        result = run_sqlite_vec(path, args)
    else:
        result = asyncio.run(
            run_matrix(path, args, half=way == "16-bit", streamed=way == "from SQLite")
        )
    print(json.dumps(result))  # noqa: T201 - the parent reads it


# -- the report -------------------------------------------------------------------------------


def in_child(way: str, path: Path, argv: list[str]) -> dict | None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.sqlite_memory", "--child", way, str(path), *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        print(f"{way}: failed\n{done.stderr[-2000:]}")  # noqa: T201
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def report_products(products: dict, args: argparse.Namespace) -> None:
    print(f"\nbare product over {args.rows:,} x {DIM}     p50 / p95      recall@10")  # noqa: T201
    for name, (p50, p95, recall) in products.items():
        print(f"{name:<38}{p50:>7.1f} / {p95:>6.1f} ms {recall:>8.3f}")  # noqa: T201


def report(results: dict[str, dict | None], args: argparse.Namespace) -> None:
    products = results.pop("products", None)
    ways = [way for way, result in results.items() if result is not None]
    line = "{:<36}" + "{:>22}" * len(ways)
    out = [line.format("", *ways)]

    def row(label: str, fn) -> None:
        out.append(line.format(label, *(fn(results[way]) for way in ways)))

    row("load (first search)", lambda r: f"{r.get('load_s', r.get('first_query_s', 0)):.2f} s")
    for k, filtered in CASES:
        name = case_name(k, filtered)
        row(f"{name} p50 / p95", lambda r, n=name: f"{r[n][0]:.1f} / {r[n][1]:.1f} ms")
        row(f"  recall@{k} vs exact", lambda r, n=name: f"{r[n][2]:.3f}")
    row(
        "matrix bytes (budget's count)",
        lambda r: f"{r['matrix_mb']:.0f} MB" if "matrix_mb" in r else "-",
    )
    row("process RSS growth", lambda r: f"{r['rss_growth_mb']:.0f} MB")
    row(
        "reload of an evicted guild", lambda r: f"{r['reload_s']:.2f} s" if "reload_s" in r else "-"
    )
    row(
        "evicted under budget (MB) / highest",
        lambda r: (
            f"{r['eviction']['budget_mb']:.0f} / {r['eviction']['highest_loaded_mb']:.0f}"
            + ("" if r["eviction"]["large_guild_evicted"] else " (not evicted!)")
            if "eviction" in r
            else "-"
        ),
    )
    row(
        "vec0 build / table size",
        lambda r: f"{r['build_s']:.0f} s / {r['table_mb']:.0f} MB" if "build_s" in r else "-",
    )
    row(
        "vec_distance_cosine over BLOBs p50",
        lambda r: f"{r['scalar_p50_ms']:.0f} ms" if "scalar_p50_ms" in r else "-",
    )
    print("\n".join(out))  # noqa: T201
    if products:
        report_products(products, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--others", type=int, default=4)
    parser.add_argument("--other-rows", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--budget-mb", type=float, default=1024)
    parser.add_argument(
        "--ways", default="float32,16-bit,from SQLite,sqlite-vec,products", help="comma-separated"
    )
    parser.add_argument("--child", nargs=2, metavar=("WAY", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args)
        return
    argv = [
        f"--rows={args.rows}",
        f"--others={args.others}",
        f"--other-rows={args.other_rows}",
        f"--queries={args.queries}",
        f"--budget-mb={args.budget_mb}",
    ]
    root = Path(tempfile.mkdtemp(prefix="clipfind-sqlite-memory-"))
    try:
        path = root / "bench.db"
        guilds = {GUILD: args.rows} | {2 + i: args.other_rows for i in range(args.others)}
        started = time.perf_counter()
        build(path, guilds)
        print(  # noqa: T201
            f"{sum(guilds.values()):,} rows in {len(guilds)} guilds written in "
            f"{time.perf_counter() - started:.0f} s; largest guild {args.rows:,} x {DIM}, "
            f"{args.queries} queries, MATRIX_MEMORY_MB={args.budget_mb:g}"
        )
        results = {}
        for way in args.ways.split(","):
            if way == "sqlite-vec":
                try:
                    import pysqlite3  # noqa: F401
                    import sqlite_vec  # noqa: F401
                except ImportError:
                    print("sqlite-vec: not installed (pip install sqlite-vec pysqlite3-binary)")  # noqa: T201
                    continue
            results[way] = in_child(way, path, argv)
        report(results, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
