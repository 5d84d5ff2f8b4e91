"""What the operator's queue figures cost on PostgreSQL with a large backlog.

Fills ``index_jobs`` with N jobs (5% failed before and waiting for a retry, 0.3% claimed), then
times `read_figures` (capped counts from ``ix_index_jobs_age``) against an exact count of every
state in one pass over the table, on a freshly vacuumed table and again after 10% of the rows
were rewritten (claims) with no vacuum since, the worst case for index-only scans.

    python -m benchmarks.queue_figures [--n 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from sqlalchemy import text

from benchmarks.store import postgres
from retrieval.database.engine import create_engine, ensure_schema
from retrieval.runtime.cluster import COUNT_CAP, read_figures

FILL = """
INSERT INTO index_jobs (guild_id, channel_id, message_id, image_key, kind, author_id, posted_at,
  url, source_url, filename, content_type, size, priority, attempts, retry_at, claimed_until,
  created_at)
SELECT g % 1000, g % 50000, g, 1, 'attachment', g % 77777, now(),
  'https://cdn.discordapp.com/attachments/1234567890/' || g || '/p.png?ex=a&is=b&hm=0123456789abcdef',
  'https://cdn.discordapp.com/attachments/1234567890/' || g || '/p.png',
  'p.png', 'image/png', 100000, g % 2,
  CASE WHEN g % 20 = 0 THEN 2 ELSE 0 END,
  now() - interval '1 second' * (:n - g) + CASE WHEN g % 20 = 0 THEN interval '1 hour' ELSE interval '0' END,
  CASE WHEN g % 1000 < 3 THEN now() + interval '5 minutes' END,
  now() - interval '1 second' * (:n - g)
FROM generate_series(1, :n) g
"""  # noqa: E501
EXACT = """
SELECT count(*) FILTER (WHERE attempts = 0), count(*) FILTER (WHERE attempts > 0),
  count(*) FILTER (WHERE claimed_until >= now()), min(created_at) FILTER (WHERE attempts = 0)
FROM index_jobs
"""


async def median_ms(call, repeat: int = 5) -> float:
    await call()  # the first read also sets hint bits; time the steady state
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def main(n: int) -> None:
    async with postgres("256MB") as url:
        engine = create_engine(url)
        try:
            await ensure_schema(engine)
            async with engine.begin() as conn:
                await conn.execute(text(FILL), {"n": n})
            async with engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text("VACUUM ANALYZE index_jobs"))

            async def exact() -> None:
                async with engine.connect() as conn:
                    await conn.execute(text(EXACT))

            async def figures() -> None:
                await read_figures(engine)

            print(f"{n:,} jobs; counts capped at {COUNT_CAP:,}")
            for state in ("vacuumed", "after 10% of rows rewritten, not vacuumed"):
                print(
                    f"  {state}: read_figures {await median_ms(figures):.1f} ms, "
                    f"exact count of the whole table {await median_ms(exact):.1f} ms"
                )
                async with engine.begin() as conn:
                    await conn.execute(
                        text(
                            "UPDATE index_jobs SET claimed_until = now() + interval '5 minutes' "
                            "WHERE id % 10 = 0"
                        )
                    )
        finally:
            await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    asyncio.run(main(parser.parse_args().n))
