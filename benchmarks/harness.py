"""What the pipeline benchmarks share: a loopback image server, a pipeline on a throwaway SQLite
database, an event-loop lag watcher, and running a measurement with another revision's code.

``retrieval`` is imported inside the functions that use it: a measurement may run in a process
whose ``retrieval`` is an older revision's (see ``run_version``), and the pipeline's API before
the durable jobs table (an in-memory queue, no jobs, no media origins) is adapted here, in the
benchmark, not in the product.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import pickle
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yarl

ROOT = Path(__file__).resolve().parent.parent


class ImageServer:
    """The benchmark's CDN and media proxy (benchmarks/image_server.py), running in a process of
    its own: ``base`` is where images[i] is served (<base>/i)."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.origin = f"http://127.0.0.1:{port}"
        self.base = f"{self.origin}/img"

    async def prepare(self, urls: Sequence[str]) -> None:
        """Make the copies these URLs ask for (those with resize parameters)."""
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.origin}/prepare", json=list(urls)) as answer,
        ):
            answer.raise_for_status()

    async def served(self) -> int:
        """Bytes of bodies sent so far."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.origin}/served") as answer,
        ):
            return (await answer.json())["served"]

    def cpu_s(self) -> float:
        """The server's CPU seconds so far (Linux: /proc; 0 elsewhere)."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def image_server(
    images: Sequence[tuple[bytes, str]], *, latency_ms: float = 0.0
) -> AsyncIterator[ImageServer]:
    """An `ImageServer` on loopback, in a process of its own (a CDN far away serves the bytes,
    not the bot's process), answering after ``latency_ms``."""
    with tempfile.NamedTemporaryFile(suffix=".pickle") as file:
        file.write(pickle.dumps([(bytes(data), kind) for data, kind in images]))
        file.flush()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.image_server",
            file.name,
            f"--latency-ms={latency_ms}",
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None and process.stdin is not None
            port = int((await process.stdout.readline()).decode() or 0)
            if not port:
                raise RuntimeError("the image server did not start (see its error above)")
            yield ImageServer(process, port)
        finally:
            if process.stdin is not None:
                process.stdin.close()  # it stops when its stdin ends
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


class RoleCpu:
    """CPU ms per image by role over a stretch of the pipeline's work, from now: this process's
    threads (`thread_cpu_s`), the image server's process, and the event loop's own clock (/proc
    counts in 10 ms ticks; the loop's clock is exact). Made on the event loop's thread."""

    def __init__(self, server: ImageServer) -> None:
        self._server = server
        self._before = self._spent()
        self._loop_before = time.thread_time()

    def _spent(self) -> dict[str, float]:
        return thread_cpu_s() | {"image server": self._server.cpu_s()}

    def per_image(self, count: int) -> dict[str, float]:
        """What each role spent since, per image of ``count``."""
        loop_s = time.thread_time() - self._loop_before
        cpu_ms = {
            role: (spent - self._before.get(role, 0.0)) * 1000 / count
            for role, spent in self._spent().items()
        }
        cpu_ms["event loop"] = loop_s * 1000 / count
        return cpu_ms


def has_jobs_table() -> bool:
    """Whether this process's ``retrieval`` has the durable jobs table (0a235e8 and after)."""
    import retrieval

    # Not importlib.util.find_spec: an editable install's finder answers for a sub-package the
    # older code lacks with the one from the checkout it was installed from.
    return (Path(retrieval.__file__).parent / "indexing").is_dir()


@contextlib.asynccontextmanager
async def sqlite_pipeline(
    encoder: Any,
    *,
    source: str,
    batch_size: int,
    decode_threads: int | None = None,
    fetch_resized: bool | None = None,
    fetch_concurrency: int | None = None,
) -> AsyncIterator[Any]:
    """A pipeline that may download from ``source``'s origin (the image server's base URL).
    ``fetch_resized``: FETCH_RESIZED on or off (None: the code's default, for older code);
    ``fetch_concurrency``: FETCH_CONCURRENCY and FETCH_PER_HOST both (None: the defaults)."""
    from retrieval.database.engine import create_engine, ensure_schema
    from retrieval.encoding.service import EncoderService
    from retrieval.pictures.fetch import Fetcher
    from retrieval.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp}/bench.db")
        await ensure_schema(engine)
        service = EncoderService(encoder)
        connector = aiohttp.TCPConnector(limit=fetch_concurrency or 100)
        async with aiohttp.ClientSession(connector=connector) as http:
            fetch_options: dict[str, Any] = dict(max_bytes=50_000_000, timeout_s=60)
            options: dict[str, Any] = {}
            if fetch_concurrency:
                fetch_options["per_host"] = options["fetch_workers"] = fetch_concurrency
            if has_jobs_table():
                from retrieval.indexing import IndexingPipeline, JobQueue
                from retrieval.pictures.origins import MediaOrigins

                fetch_options["allowed"] = MediaOrigins.parse(str(yarl.URL(source).origin()))
                options["jobs"] = JobQueue(engine, model_id=encoder.model_id)
            else:  # before the jobs table: an in-memory queue, any origin
                from retrieval.pipeline import IndexingPipeline
            if fetch_resized is not None:
                options["fetch_resized"] = fetch_resized
            pipeline = IndexingPipeline(
                fetcher=Fetcher(http, **fetch_options),
                encoder=service,
                store=open_store(engine),
                spec=encoder.spec,
                max_pixels=50_000_000,
                batch_size=batch_size,
                batch_deadline_s=0.05,
                decode_threads=decode_threads,
                **options,
            )
            await pipeline.start()
            try:
                yield pipeline
            finally:
                await pipeline.close()
                await service.close()
                await engine.dispose()


def refs(base_url: str, count: int, images: Sequence[tuple[bytes, str]] = ()) -> list:
    """Refs to <base_url>/i; with ``images`` (and code that knows them), each gives its type,
    size and a proxy link as Discord's payloads do (the image server is its own media proxy)."""
    if has_jobs_table():
        from retrieval.indexing import ImageRef
    else:
        from retrieval.pipeline import ImageRef
    now = datetime.now(UTC)
    sized = bool(images) and "proxy_url" in {f.name for f in dataclasses.fields(ImageRef)}
    return [
        ImageRef(
            **(_payload_sizes(images[i], f"{base_url}/{i}") if sized else {}),
            guild_id=1,
            channel_id=1,
            message_id=i + 1,
            image_key=i + 1,
            kind="attachment",
            author_id=1,
            posted_at=now,
            url=f"{base_url}/{i}",
            source_url=f"{base_url}/{i}",
            filename=f"{i}",
        )
        for i in range(count)
    ]


@contextlib.asynccontextmanager
async def loop_lag(
    probe: Callable[[], None] | None = None, interval: float = 0.01
) -> AsyncIterator[list[float]]:
    """Samples how late a 10 ms sleep wakes up (ms), calling ``probe`` at each tick."""
    lags: list[float] = []
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(interval)
            lags.append((time.perf_counter() - before - interval) * 1000)
            if probe is not None:
                probe()

    watcher = asyncio.create_task(watch())
    try:
        yield lags
    finally:
        stop.set()
        await watcher
        lags.sort()


def _payload_sizes(image: tuple[bytes, str], url: str) -> dict[str, Any]:
    from PIL import Image

    with Image.open(io.BytesIO(image[0])) as picture:
        width, height = picture.size
    return dict(proxy_url=url, width=width, height=height, content_type=image[1])


def encode_in_streams(
    encoder: Any,
    pixels: Any,
    streams: int,
    *,
    enter: Callable[[], object],
    batches: int | None = None,
    seconds: float | None = None,
) -> float:
    """Images/s of ``streams`` threads, each encoding the batch ``pixels`` over and over:
    ``batches`` times, or for ``seconds``. Each thread calls ``enter()`` (its share of torch's
    threads) and encodes one batch to warm up; the clock starts once all of them have."""
    done = [0] * streams
    clock: dict[str, float] = {}

    def start() -> None:  # the barrier's action: runs once, before any thread is let go
        clock["started"] = time.perf_counter()
        clock["until"] = clock["started"] + (seconds or 0.0)

    ready = threading.Barrier(streams, action=start)

    def more(i: int) -> bool:
        if batches is not None:
            return done[i] < batches
        return time.perf_counter() < clock["until"]

    def stream(i: int) -> None:
        enter()
        encoder.encode_images(pixels)  # warm-up on this thread, at this shape
        ready.wait()
        while more(i):
            encoder.encode_images(pixels)
            done[i] += 1

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) * len(pixels) / (time.perf_counter() - clock["started"])


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds so far per role: the model (its Python thread and torch's native workers),
    decoding, the event loop, other. Linux only (/proc); empty elsewhere."""
    import threading

    roles = {str(t.native_id): t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        name = roles.get(tid)
        if name is None or name == "clip-encoder":
            role = "model"  # torch's OpenMP workers are not Python threads
        elif name.startswith("clip-decode"):
            role = "decode"
        elif name == "MainThread":
            role = "event loop"
        else:
            role = "other"
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


# -- another revision's code, side by side -------------------------------------------------------


def export(revision: str, into: Path) -> Path:
    """``revision``'s product code (``retrieval``, ``bot``, ``migrations``) under ``into``; the
    benchmarks and tests stay this checkout's."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "retrieval", "bot", "migrations"],
        check=True,
        capture_output=True,
    ).stdout
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_version(code: Path, module: str, args: Sequence[str]) -> dict:
    """Runs ``python -m module *args`` in a fresh process whose ``retrieval`` and ``bot`` are the
    ones under ``code`` (this checkout's benchmarks and tests still import); returns the JSON
    object its last line printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(ROOT)])}
    # Not from ROOT: the working directory comes first on sys.path and would shadow ``code``.
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(
            [sys.executable, "-m", module, *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
        )
    if done.returncode:
        sys.stderr.write(done.stderr)
        done.check_returncode()
    return json.loads(done.stdout.strip().splitlines()[-1])


# One image row as the raw writers below take it: guild, channel, message, image key, author,
# posted_at ('YYYY-MM-DD HH:MM:SS.ffffff', as SQLite stores it), file name, source URL, content
# hash, model id, float32 vector bytes.
RAW_INSERT = (
    "INSERT INTO images (guild_id, channel_id, message_id, image_key, kind, author_id, "
    "posted_at, filename, source_url, content_type, content_hash, model_id, embedding) "
    "VALUES (?, ?, ?, ?, 'attachment', ?, ?, ?, ?, 'image/png', ?, ?, ?)"
)


def raw_sqlite(path: Path) -> sqlite3.Connection:
    """A new clipfind SQLite database at ``path``, opened for writing rows as fast as SQLite
    takes them (``RAW_INSERT`` with executemany): a large instance is set up in seconds rather
    than through the store."""
    from retrieval.database.engine import create_engine, ensure_schema

    async def schema() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        await ensure_schema(engine)
        await engine.dispose()

    asyncio.run(schema())
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db
