"""How fast one process indexes when the model costs next to nothing: the limit a GPU indexer's
process meets whatever its GPU.

The pipeline as `benchmarks.indexing` runs it (SQLite, the photo mix, the media proxy's copies,
the image server in a process of its own), with the tests' tiny CLIP model (64 px input, well
under a millisecond a picture) in place of ViT-B-32. The image server answers after
``--latency-ms``, as Discord's CDN does from far away; for each latency and each
``--concurrency`` (FETCH_CONCURRENCY and FETCH_PER_HOST both, since Discord's pictures come from
one or two hosts): images/s, and the CPU per image by role. Downloads in flight cap the rate at
concurrency / latency (Little's law); the event loop, one thread, caps it at 1,000 / its ms per
image.

    python -m benchmarks.loop_ceiling [--images 384] [--latency-ms 0,50] [--concurrency 4,8,64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import RoleCpu, image_server, refs, sqlite_pipeline  # noqa: E402
from benchmarks.indexing import make_images, proxy_urls  # noqa: E402
from retrieval.encoding.clip import Encoder  # noqa: E402
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH  # noqa: E402

BATCH = 64  # a GPU's kind of batch: what is written per transaction


async def one_pass(encoder: Encoder, images, *, latency_ms: float, concurrency: int) -> dict:
    async with (
        image_server(images, latency_ms=latency_ms) as server,
        sqlite_pipeline(
            encoder,
            source=server.base,
            batch_size=BATCH,
            fetch_resized=True,
            fetch_concurrency=concurrency,
        ) as pipe,
    ):
        await server.prepare(proxy_urls(encoder, server.base, images))
        cpu = RoleCpu(server)
        started = time.perf_counter()
        await pipe.submit(refs(server.base, len(images), images))
        await pipe.join()
        elapsed = time.perf_counter() - started
        cpu_ms = cpu.per_image(len(images))
        assert pipe.counters.indexed + pipe.counters.reused == len(images), pipe.counters
    return {"rate": len(images) / elapsed, "cpu_ms": cpu_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--latency-ms", default="0,50", help="the CDN's, comma-separated")
    parser.add_argument(
        "--concurrency", default="4,8,64", help="downloads at once, comma-separated"
    )
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    encoder = Encoder.load(
        model=str(CONFIG_PATH), pretrained=str(CHECKPOINT_PATH), device="cpu", precision="fp32"
    )
    images = make_images(args.images, "mixed")
    latencies = [float(x) for x in args.latency_ms.split(",")]
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    asyncio.run(one_pass(encoder, images[: BATCH * 2], latency_ms=0, concurrency=8))  # warm-up
    print(f"{args.images} images (tiny model, batch {BATCH}), {args.rounds} rounds, medians")
    print(f"{'latency':>8} {'in flight':>9} {'img/s':>8} {'cap':>8} {'loop ms':>8} {'decode':>7}")
    for latency in latencies:
        for concurrency in concurrencies:
            runs = [
                asyncio.run(one_pass(encoder, images, latency_ms=latency, concurrency=concurrency))
                for _ in range(args.rounds)
            ]
            rate = statistics.median(r["rate"] for r in runs)
            loop = statistics.median(r["cpu_ms"]["event loop"] for r in runs)
            decode = statistics.median(r["cpu_ms"].get("decode", 0.0) for r in runs)
            cap = concurrency * 1000 / latency if latency else float("inf")
            print(
                f"{latency:6.0f}ms {concurrency:9d} {rate:8.1f} {cap:8.0f} {loop:8.2f} "
                f"{decode:7.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
