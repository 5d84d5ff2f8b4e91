"""What reading the words costs the CLIP lane: one process, OCR off against OCR on, side by side.

Pictures with words (tests/textimages.py's set) arrive in waves, as posts do: ``--wave`` images
every ``--every`` seconds, ``--waves`` times, from a loopback HTTP server into a SQLite pipeline
with ViT-B-32 (random weights: speed does not depend on them). With OCR on, the OCR lane runs in
the same process (one reading thread, `OCR_THREADS=1`) and reads between the waves, when no image
waits for its vector; a reading already running when a wave arrives shares the CPU with it. Per
run: the CLIP lane's images per second while it had work (first wave queued to last vector
stored, minus the idle gaps), each image's time from queued to searchable (p50, p95), and with
OCR on, the pictures read by then and after. Runs alternate off, on, off, on... so that what else
runs on the machine weighs on both alike.

    python -m benchmarks.reading_lane [--rounds 2] [--waves 6] [--wave 8] [--every 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time

import aiohttp

from benchmarks.harness import image_server, percentile, refs
from retrieval.database.engine import create_engine, ensure_schema
from retrieval.database.tables import OCR_LANE
from retrieval.encoding.clip import Encoder
from retrieval.encoding.ocr import OcrEngine
from retrieval.encoding.service import EncoderService
from retrieval.indexing import IndexingPipeline, JobQueue, ReadingLane
from retrieval.indexing.signed_urls import SignedUrls
from retrieval.pictures.fetch import Fetcher
from retrieval.pictures.origins import MediaOrigins
from retrieval.store import open_store
from tests.textimages import make_set


@contextlib.asynccontextmanager
async def lanes(encoder, ocr: OcrEngine | None, base: str):
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp}/bench.db")
        await ensure_schema(engine)
        service = EncoderService(encoder)
        store = open_store(engine)
        jobs = JobQueue(engine, model_id=encoder.model_id, read_words=ocr is not None)
        async with aiohttp.ClientSession() as http:
            origin = base.rsplit("/img", 1)[0]
            fetcher = Fetcher(
                http, allowed=MediaOrigins.parse(origin), max_bytes=50_000_000, timeout_s=60
            )
            pipeline = IndexingPipeline(
                fetcher=fetcher,
                encoder=service,
                store=store,
                jobs=jobs,
                spec=encoder.spec,
                max_pixels=50_000_000,
                batch_size=8,
                batch_deadline_s=0.05,
            )
            await pipeline.start()
            reading = None
            if ocr is not None:
                reading = ReadingLane(
                    jobs=jobs.for_lane(OCR_LANE),
                    clip_jobs=jobs,
                    clip_held=lambda: pipeline.queued,
                    engine=ocr,
                    fetcher=fetcher,
                    store=store,
                    signed_urls=SignedUrls(None),
                    max_pixels=50_000_000,
                )
                await reading.start()
            try:
                yield pipeline, reading
            finally:
                if reading is not None:
                    await reading.close()
                await pipeline.close()
                await service.close()
                await store.close()
                await engine.dispose()


async def run(encoder, ocr, base: str, *, waves: int, wave: int, every: float) -> dict:
    async with lanes(encoder, ocr, base) as (pipeline, reading):
        images = refs(base, waves * wave)
        busy, waits = 0.0, []
        for w in range(waves):
            batch = images[w * wave : (w + 1) * wave]
            started = time.perf_counter()
            await pipeline.submit(batch)
            await pipeline.join()
            took = time.perf_counter() - started
            busy += took
            waits.append(took)  # the wave's last image: queued to searchable
            await asyncio.sleep(max(every - took, 0))
        read_by_then = reading.counters.indexed if reading else 0
        if reading is not None:
            await reading.join()
        waits.sort()
        return {
            "clip_per_s": waves * wave / busy,
            "wave_p50_s": percentile(waits, 0.5),
            "wave_max_s": waits[-1],
            "read_during": read_by_then,
            "read": reading.counters.indexed if reading else 0,
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--waves", type=int, default=6)
    parser.add_argument("--wave", type=int, default=8)
    parser.add_argument("--every", type=float, default=4.0)
    args = parser.parse_args()
    samples = make_set(seed=21, count=args.waves * args.wave)
    served = [(s.data, "image/png" if s.data[:4] == b"\x89PNG" else "image/jpeg") for s in samples]
    encoder = Encoder.load(model="ViT-B-32", pretrained=None, device="cpu", precision="fp32")
    ocr = OcrEngine(threads=1)
    ocr.load()
    results: dict[str, list[dict]] = {"off": [], "on": []}
    async with image_server(served) as server:
        base = server.base
        await run(encoder, None, base, waves=1, wave=args.wave, every=0)  # warm-up
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                found = await run(
                    encoder,
                    ocr if mode == "on" else None,
                    base,
                    waves=args.waves,
                    wave=args.wave,
                    every=args.every,
                )
                results[mode].append(found)
                print(mode, {k: round(v, 2) for k, v in found.items()}, flush=True)
    print(f"{'OCR':4} {'CLIP img/s':>10} {'wave p50 s':>10} {'wave max s':>10} {'read':>5}")
    for mode, runs in results.items():
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        print(
            f"{mode:4} {mean['clip_per_s']:10.2f} {mean['wave_p50_s']:10.2f} "
            f"{mean['wave_max_s']:10.2f} {mean['read']:5.0f}"
        )
    ratio = sum(r["clip_per_s"] for r in results["on"]) / sum(
        r["clip_per_s"] for r in results["off"]
    )
    print(f"CLIP lane with OCR on / off: {ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
