"""What the checks at the edges cost: cleaning an image's reference before it is queued, and the
model check each write of vectors makes in its transaction (retrieval/store/allowed.py).

One live write (one image and its job, the pipeline's commonest write) is timed with the check
and without it (the check replaced by nothing), alternating, in one process on each database,
so both see the same load; the median of each is printed.

    python -m benchmarks.edge_checks [--rounds 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import timeit
from datetime import UTC, datetime

import numpy as np

import retrieval.store.postgres as pg_store
import retrieval.store.sqlite as sqlite_store
from benchmarks.store import postgres
from retrieval.database.engine import create_engine, ensure_schema
from retrieval.indexing import ImageRef, JobQueue
from retrieval.indexing.inputs import clean_ref, ref_problem
from retrieval.indexing.model_switch import adopt_model
from retrieval.store import open_store
from tests.records import MODEL, image_record, job_ref

# A live attachment as Discord sends it: snowflakes, a signed CDN link.
_CHANNEL, _ATTACHMENT = 1579380379444449286, 1579380391402410005
_LINK = f"https://cdn.discordapp.com/attachments/{_CHANNEL}/{_ATTACHMENT}/photo.png"
REF = ImageRef(
    guild_id=1579380379444449283,
    channel_id=_CHANNEL,
    message_id=1579380391402410004,
    image_key=_ATTACHMENT,
    kind="attachment",
    author_id=1579380379444449290,
    posted_at=datetime.now(UTC),
    url=_LINK + "?ex=6790a1b2&is=678f5032&hm=" + "0123456789abcdef" * 4 + "&",
    source_url=_LINK,
    filename="photo.png",
    content_type="image/png",
    size=123_456,
)


def cleaning_us(number: int = 20_000) -> float:
    return timeit.timeit(lambda: ref_problem(clean_ref(REF)), number=number) / number * 1e6


async def _unchecked(conn, records) -> None:
    return None


async def live_writes(url: str, rounds: int) -> tuple[float, float]:
    """Median ms of one live write with the model check and without it."""
    engine = create_engine(url)
    try:
        await ensure_schema(engine)
        store = open_store(engine)
        await adopt_model(engine, store, MODEL)
        queue = JobQueue(engine, model_id=MODEL)
        checks = {module: module.check_model for module in (sqlite_store, pg_store)}
        times: dict[bool, list[float]] = {True: [], False: []}
        rng = np.random.default_rng(0)
        for i in range(rounds):
            for checked in (True, False) if i % 2 else (False, True):
                record = image_record(2 * i + checked, rng.normal(size=512).astype(np.float32))
                await queue.enqueue([job_ref(record)])
                (job,) = await queue.claim(1)
                for module, check in checks.items():
                    module.check_model = check if checked else _unchecked
                started = time.perf_counter()
                await store.upsert([record], job_ids=[job.id])
                times[checked].append(time.perf_counter() - started)
        for module, check in checks.items():
            module.check_model = check
        await store.close()
    finally:
        await engine.dispose()
    return statistics.median(times[True]) * 1e3, statistics.median(times[False]) * 1e3


async def run(rounds: int) -> None:
    print(f"load average (1 min) before: {os.getloadavg()[0]:.2f}")
    print(f"cleaning and checking one image's reference: {cleaning_us():.1f} µs")
    folder = tempfile.mkdtemp(prefix="clipfind-bench-edge-")
    urls = {"sqlite": f"sqlite+aiosqlite:///{folder}/edge.db"}
    async with postgres("128MB") as url:
        urls["postgres"] = url
        for name, database in urls.items():
            checked, unchecked = await live_writes(database, rounds)
            print(
                f"{name} one live write, median of {rounds}: {checked:.2f} ms with the model "
                f"check, {unchecked:.2f} ms without ({checked - unchecked:+.2f} ms)"
            )
    print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    asyncio.run(run(parser.parse_args().rounds))


if __name__ == "__main__":
    main()
