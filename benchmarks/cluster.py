"""Encoder workers on one PostgreSQL queue against the in-process pipeline, on the same images.

1. Throughput: N images queued at once, drained by the bot's own pipeline (in this process,
   as `python -m bot` with ENCODE_IMAGES=true runs it), then by 1, 2 and 4 `python -m bot worker`
   processes; the clock runs from the first claim to the empty jobs table.
2. Latency under a steady load: one image queued at a time at a fixed rate below capacity
   (``--load`` of what that set-up drained), reporting p50/p95/max from queueing to stored; the
   in-process pipeline is handed images as the bot hands them (``submit``, which wakes it), a
   worker finds them in the table as a gateway process with ENCODE_IMAGES=false leaves them.

Embedded PostgreSQL (pgvector), images served from loopback by a process of their own, every
set-up with the same settings (CPU, CLIP_PRECISION auto, the device's default batch size and
decode threads). Each throughput is the best of ``--repeat`` drains: the figures are capacity,
and other work on a shared machine only ever takes from it.

    python -m benchmarks.cluster            # ViT-B-32 with random weights (same cost as trained)
    python -m benchmarks.cluster --quick    # the tiny test model: a check that it runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yarl  # noqa: E402
from sqlalchemy import delete, func, select  # noqa: E402

from benchmarks.harness import percentile, refs  # noqa: E402
from benchmarks.indexing import make_images  # noqa: E402
from benchmarks.store import postgres  # noqa: E402
from retrieval.config import Settings, load_settings  # noqa: E402
from retrieval.database.engine import create_engine, ensure_schema  # noqa: E402
from retrieval.database.tables import IndexedImage, IndexJob  # noqa: E402
from retrieval.indexing import ImageRef, IndexingPipeline, JobQueue  # noqa: E402
from retrieval.runtime.services import open_services  # noqa: E402
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_POLL_S = 0.05


@contextlib.asynccontextmanager
async def image_files_server(images: list[tuple[bytes, str]]) -> AsyncIterator[str]:
    """Serves images[i] at <base>/i from a process of its own, so that serving them takes no
    CPU time from the event loop of the in-process pipeline (workers have theirs to themselves)."""
    import socket

    with tempfile.TemporaryDirectory() as folder:
        _write_files(folder, images)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            folder,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            while True:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                await asyncio.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            await server.wait()


def _write_files(folder: str, images: list[tuple[bytes, str]]) -> None:
    for i, (data, _) in enumerate(images):
        Path(folder, str(i)).write_bytes(data)


def model_settings(quick: bool) -> dict[str, str]:
    if quick:
        return {"clip_model": str(CONFIG_PATH), "clip_pretrained": str(CHECKPOINT_PATH)}
    return {"clip_model": "ViT-B-32", "clip_pretrained": ""}


async def jobs_left(engine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(IndexJob)))


async def forget_everything(engine) -> None:
    """A run must encode every image again: stored vectors would be reused by content hash."""
    async with engine.begin() as conn:
        await conn.execute(delete(IndexJob))
        await conn.execute(delete(IndexedImage))


async def claimed(engine) -> bool:
    async with engine.connect() as conn:
        stmt = select(IndexJob.id).where(IndexJob.claimed_until.is_not(None)).limit(1)
        return await conn.scalar(stmt) is not None


async def drain(engine, queue: JobQueue, batch: list[ImageRef]) -> float:
    """Images/s from the first claim of ``batch`` to an empty jobs table. Counted from the
    claim, not the queueing: a consumer looks at the table once a second when nothing wakes
    it, and that wait belongs to the latency figures, not to throughput."""
    await forget_everything(engine)
    await queue.enqueue(batch)
    while not await claimed(engine):  # noqa: ASYNC110 - other processes do the work
        await asyncio.sleep(_POLL_S / 5)
    started = time.perf_counter()
    while await jobs_left(engine):  # noqa: ASYNC110 - other processes do the work
        await asyncio.sleep(_POLL_S)
    elapsed = time.perf_counter() - started
    async with engine.connect() as conn:
        stored = await conn.scalar(select(func.count()).select_from(IndexedImage))
    assert stored == len(batch), f"{stored} of {len(batch)} stored"
    return len(batch) / elapsed


async def best_drain(engine, queue: JobQueue, batch: list[ImageRef], repeat: int) -> float:
    return max([await drain(engine, queue, batch) for _ in range(repeat)])


async def steady(engine, batch: list[ImageRef], *, rate: float, put) -> tuple[list[float], float]:
    """Queue one image every 1/rate s with ``put``; seconds from queueing to stored, sorted,
    and the rate really kept."""
    await forget_everything(engine)
    queued: dict[int, float] = {}
    latencies: list[float] = []

    async def watch() -> None:
        seen: set[int] = set()
        while len(seen) < len(batch):
            async with engine.connect() as conn:
                ids = set((await conn.scalars(select(IndexedImage.message_id))).all())
            now = time.perf_counter()
            for message_id in ids - seen:
                latencies.append(now - queued[message_id])
            seen |= ids
            await asyncio.sleep(_POLL_S / 2)

    watcher = asyncio.create_task(watch())
    started = time.perf_counter()
    for i, ref in enumerate(batch):
        await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        queued[ref.message_id] = time.perf_counter()
        await put([ref])
    kept = len(batch) / (time.perf_counter() - started)
    await asyncio.wait_for(watcher, 300)
    return sorted(latencies), kept


def worker_env(settings: Settings) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CLIP_", "DATABASE_"))}
    return {
        **keep,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": settings.database_url,
        "DISCORD_MEDIA_ORIGINS": settings.discord_media_origins,
        "CLIP_MODEL": settings.clip_model,
        "CLIP_PRETRAINED": settings.clip_pretrained or "",
        "CLIP_DEVICE": "cpu",
        "QUEUE_SIZE": str(settings.queue_size),
    }


@contextlib.asynccontextmanager
async def workers(count: int, settings: Settings, logs: Path) -> AsyncIterator[None]:
    """``count`` worker processes, yielded once each has its model loaded and polls the queue."""
    env = {**worker_env(settings), "LOG_LEVEL": "INFO"}  # its start line says it is ready
    started = []
    for i in range(count):
        with (logs / f"worker-{count}-{i}.log").open("wb") as out:
            started.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bot",
                    "worker",
                    cwd=logs,
                    env=env,
                    stdout=out,
                    stderr=out,
                )
            )
    try:
        for i in range(count):
            log = logs / f"worker-{count}-{i}.log"
            while "encoder worker started" not in log.read_text(errors="replace"):
                if started[i].returncode is not None:
                    raise RuntimeError(f"worker exited:\n{log.read_text()}")
                await asyncio.sleep(0.2)
        yield
    finally:
        for process in started:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            await process.wait()


def line(name: str, rate: float, base: float) -> str:
    return f"{name:<22} {rate:7.2f} img/s  {rate / base:5.2f}x"


def latency_line(name: str, lat: list[float], rate: float, kept: float) -> str:
    ms = [v * 1000 for v in lat]
    return (
        f"{name:<22} {len(lat)} images at {kept:5.2f} img/s ({rate:.2f} asked): "
        f"p50 {percentile(ms, 0.5):6.0f} ms, p95 {percentile(ms, 0.95):6.0f} ms, "
        f"max {ms[-1]:6.0f} ms"
    )


async def main(args: argparse.Namespace) -> None:
    images = make_images(args.images, args.mix)
    counts = [int(c) for c in args.workers.split(",")]
    async with postgres("256MB") as url, image_files_server(images) as base:
        engine = create_engine(url)
        await ensure_schema(engine)
        settings = load_settings(
            _env_file=None,
            database_url=url,
            discord_media_origins=str(yarl.URL(base).origin()),
            clip_device="cpu",
            # A window of a few batches: with the default 256 the first worker to look would
            # claim a whole burst of this size and leave the others idle.
            queue_size=args.window,
            **model_settings(args.quick),
        )
        throughput: dict[str, float] = {}
        latency: dict[str, tuple[list[float], float, float]] = {}

        def steady_count(rate: float) -> int:
            # No image twice: a repeated one would be a repost, copied without encoding.
            return max(1, min(args.images, int(rate * args.steady_s)))

        def batch(offset: int, count: int) -> list[ImageRef]:
            made = refs(base, count)
            return [ImageRef(**{**_fields(r), "message_id": r.message_id + offset}) for r in made]

        async with open_services(settings, engine=engine) as indexing:
            gc.collect()
            gc.freeze()  # as the bot and the worker do once loaded
            pipeline: IndexingPipeline = indexing.pipeline
            queue = pipeline.jobs
            print(
                f"model {indexing.encoder.model_id} on {indexing.encoder.device} in "
                f"{indexing.encoder.precision}, batches of {pipeline.batch_size}; "
                f"{args.images} images ({args.mix}); QUEUE_SIZE {args.window}; "
                f"{os.cpu_count()} cores",
                flush=True,
            )
            await drain(engine, queue, batch(10_000_000, min(8, args.images)))  # warm-up
            throughput["in-process pipeline"] = await best_drain(
                engine, queue, batch(0, args.images), args.repeat
            )
            rate = throughput["in-process pipeline"] * args.load
            lat, kept = await steady(
                engine, batch(20_000_000, steady_count(rate)), rate=rate, put=pipeline.submit
            )
            latency["in-process pipeline"] = (lat, rate, kept)
        queue = JobQueue(engine, model_id=queue.model_id)
        with tempfile.TemporaryDirectory() as logs:
            for count in counts:
                name = f"{count} worker{'s' if count > 1 else ''}"
                async with workers(count, settings, Path(logs)):
                    await drain(engine, queue, batch(30_000_000, min(8 * count, args.images)))
                    throughput[name] = await best_drain(
                        engine, queue, batch(0, args.images), args.repeat
                    )
                    if count == 1:
                        rate = throughput[name] * args.load
                        lat, kept = await steady(
                            engine,
                            batch(40_000_000, steady_count(rate)),
                            rate=rate,
                            put=queue.enqueue,
                        )
                        latency[name] = (lat, rate, kept)
                print(line(name, throughput[name], throughput["in-process pipeline"]), flush=True)
        await engine.dispose()

    base_rate = throughput["in-process pipeline"]
    print("\nthroughput (first claim to empty jobs table), against the in-process pipeline:")
    for name, rate in throughput.items():
        print("  " + line(name, rate, base_rate))
    print(
        f"\nqueued to stored under a steady load ({args.load:.0%} of each one's throughput, "
        f"up to {args.steady_s:g} s and {args.images} images):"
    )
    for name, (lat, rate, kept) in latency.items():
        print("  " + latency_line(name, lat, rate, kept))


def _fields(ref: ImageRef) -> dict:
    return {name: getattr(ref, name) for name in ImageRef.__slots__}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the tiny test model")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--mix", choices=("mixed", "photos"), default="mixed")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--window", type=int, default=64, help="QUEUE_SIZE of every set-up")
    parser.add_argument("--repeat", type=int, default=3, help="drains per set-up, best kept")
    parser.add_argument("--load", type=float, default=0.5, help="share of capacity, steady run")
    parser.add_argument("--steady-s", type=float, default=30.0)
    asyncio.run(main(parser.parse_args()))
