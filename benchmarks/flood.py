"""A flood: N images arrive at once (N concurrent submitters, like N MESSAGE_CREATE events).

Shows that memory stays flat (bounded queues, backpressure), that nothing is dropped, and the
event-loop lag while it drains. Uses the tiny test model so 10,000 images take minutes, not
hours; the pipeline's memory bound does not depend on the model.

    python -m benchmarks.flood [--images 10000] [--images-small 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
from aiohttp import web  # noqa: E402
from PIL import Image  # noqa: E402

from retrieval.db import create_engine, ensure_schema  # noqa: E402
from retrieval.encoder import Encoder  # noqa: E402
from retrieval.encoding import EncoderService  # noqa: E402
from retrieval.fetch import Fetcher  # noqa: E402
from retrieval.pipeline import ImageRef, IndexingPipeline  # noqa: E402
from retrieval.store import open_store  # noqa: E402
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def image_bytes(i: int, size: int = 256) -> bytes:
    """Distinct 256 px JPEGs (~10 KB): a gradient with the index written into the pixels."""
    base = np.linspace(0, 255, size * size * 3, dtype=np.float32).reshape(size, size, 3)
    base[0, :32, 0] = [(i >> b) & 1 and 255 for b in range(32)]
    buf = io.BytesIO()
    Image.fromarray(base.astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


async def flood(encoder: Encoder, count: int) -> dict:
    payload = [image_bytes(i) for i in range(count)]
    app = web.Application()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=payload[int(request.match_info["i"])], content_type="image/jpeg")

    app.router.add_get("/img/{i}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp}/flood.db")
        await ensure_schema(engine)
        service = EncoderService(encoder)
        async with aiohttp.ClientSession() as http:
            pipeline = IndexingPipeline(
                fetcher=Fetcher(http, max_bytes=10_000_000, timeout_s=60),
                encoder=service,
                store=open_store(engine),
                spec=encoder.spec,
                max_pixels=50_000_000,
                batch_size=32,
                batch_deadline_s=0.05,
            )
            await pipeline.start()
            baseline = rss_mb()
            peak, peak_queue, lags = baseline, 0, []
            done = asyncio.Event()

            async def watch(interval: float = 0.01) -> None:
                nonlocal peak, peak_queue
                while not done.is_set():
                    before = time.perf_counter()
                    await asyncio.sleep(interval)
                    lags.append((time.perf_counter() - before - interval) * 1000)
                    peak = max(peak, rss_mb())
                    peak_queue = max(peak_queue, pipeline.queued)

            watcher = asyncio.create_task(watch())
            now = datetime.now(UTC)
            started = time.perf_counter()
            url = f"http://127.0.0.1:{port}/img"
            await asyncio.gather(
                *(
                    pipeline.submit(
                        [
                            ImageRef(
                                guild_id=1,
                                channel_id=1,
                                message_id=i + 1,
                                image_key=i + 1,
                                kind="attachment",
                                author_id=1,
                                posted_at=now,
                                url=f"{url}/{i}",
                                source_url=f"{url}/{i}",
                                filename=f"{i}.jpg",
                            )
                        ]
                    )
                    for i in range(count)
                )
            )
            await pipeline.join()
            elapsed = time.perf_counter() - started
            done.set()
            await watcher
            await pipeline.close()
            lags.sort()
            result = dict(
                images=count,
                indexed=pipeline.counters.indexed,
                failed=sum(pipeline.counters.failed.values()),
                seconds=elapsed,
                rate=count / elapsed,
                baseline_mb=baseline,
                peak_growth_mb=peak - baseline,
                peak_queue=peak_queue,
                lag_p50=statistics.median(lags),
                lag_p99=lags[int(len(lags) * 0.99) - 1],
                lag_max=lags[-1],
            )
        await service.close()
        await engine.dispose()
    await runner.cleanup()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--images-small", type=int, default=1_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    encoder = Encoder.load(model=str(CONFIG_PATH), pretrained=str(CHECKPOINT_PATH), device="cpu")
    rows = [asyncio.run(flood(encoder, n)) for n in (args.images_small, args.images)]
    print(
        f"{'images':>7} {'indexed':>7} {'failed':>6} {'img/s':>7} {'RSS growth MB':>13} "
        f"{'peak queue':>10} {'lag p50/p99/max ms':>20}"
    )
    for r in rows:
        print(
            f"{r['images']:>7} {r['indexed']:>7} {r['failed']:>6} {r['rate']:>7.1f} "
            f"{r['peak_growth_mb']:>13.1f} {r['peak_queue']:>10} "
            f"{r['lag_p50']:>6.1f}/{r['lag_p99']:.1f}/{r['lag_max']:.1f}"
        )
    small, big = rows
    print(
        f"{big['images'] / small['images']:.0f}x the images → "
        f"{big['peak_growth_mb'] / max(small['peak_growth_mb'], 0.1):.2f}x the memory growth"
    )


if __name__ == "__main__":
    main()
