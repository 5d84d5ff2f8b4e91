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
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.harness import image_server, loop_lag, percentile, refs, sqlite_pipeline  # noqa: E402
from retrieval.encoder import Encoder  # noqa: E402
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
    images = [(image_bytes(i), "image/jpeg") for i in range(count)]
    async with (
        image_server(images) as base,
        sqlite_pipeline(encoder, source=base, batch_size=32) as pipe,
    ):
        baseline = rss_mb()
        peak = {"rss": baseline, "queue": 0}

        def probe() -> None:
            peak["rss"] = max(peak["rss"], rss_mb())
            peak["queue"] = max(peak["queue"], pipe.queued)

        async with loop_lag(probe) as lags:
            started = time.perf_counter()
            # One submitter per image, as one event handler per MESSAGE_CREATE would be.
            await asyncio.gather(*(pipe.submit([ref]) for ref in refs(base, count)))
            await pipe.join()
            elapsed = time.perf_counter() - started
        return dict(
            images=count,
            indexed=pipe.counters.indexed,
            failed=sum(pipe.counters.failed.values()),
            rate=count / elapsed,
            peak_growth_mb=peak["rss"] - baseline,
            peak_queue=peak["queue"],
            lag_p50=statistics.median(lags),
            lag_p99=percentile(lags, 0.99),
            lag_max=lags[-1],
        )


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
