"""The composition root: opening what indexes images and encodes queries (the policy, the model,
the HTTP fetcher, the store, the jobs queue and the pipeline that drains it) as one `Services`.
The bot and `python -m bot worker` both open them here, so a worker runs with exactly the bot's
settings and code path."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from retrieval.database.engine import CLOSE_S
from retrieval.database.tables import CLIP_LANE, OCR_LANE
from retrieval.encoding.service import EncoderService
from retrieval.indexing import (
    BackfillCursors,
    IndexingPipeline,
    JobQueue,
    ReadingLane,
    RefreshUrls,
    SignedUrls,
    apply_reading,
)
from retrieval.pictures.fetch import Fetcher
from retrieval.policy import IndexPolicy
from retrieval.runtime.signals import abandonable
from retrieval.store import VectorStore, open_store
from retrieval.supervisor import Supervisor

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from retrieval.config import Settings
    from retrieval.encoding.clip import Encoder

log = logging.getLogger(__name__)

# Of the stop's deadline, what the steps after the pipeline's close keep: closing the
# database's connections, and the interpreter's own exit.
_AFTER_PIPELINE_S = CLOSE_S + 1.0


@dataclass(frozen=True)
class Services:
    """What a process indexes and searches with, opened together by `open_services` and handed
    whole to the bot (`bot.client.ClipfindBot`) and to the worker (`bot.worker`)."""

    settings: Settings
    engine: AsyncEngine
    supervisor: Supervisor  # runs every long-lived task of the process, restarting a failed one
    # The CLIP model, the one thread that runs it (queries first) and the pipeline of the CLIP
    # lane: None only in a worker that takes the OCR lane alone, which loads no CLIP model.
    model: Encoder | None
    encoder: EncoderService | None
    store: VectorStore
    fetcher: Fetcher
    jobs: JobQueue
    pipeline: IndexingPipeline | None
    policy: IndexPolicy  # loaded; a process that writes policy keeps it current (`watch`)
    cursors: BackfillCursors
    # The OCR lane, where this process reads the words in pictures (OCR on, "ocr" among
    # WORKER_LANES, and taking jobs at all); None elsewhere.
    reading: ReadingLane | None = None


def _reading_lane(
    settings: Settings,
    *,
    jobs: JobQueue,
    pipeline: IndexingPipeline | None,
    signed_urls: SignedUrls,
    fetcher: Fetcher,
    store: VectorStore,
    supervisor: Supervisor,
) -> ReadingLane:
    from retrieval.encoding.ocr import OcrEngine

    return ReadingLane(
        jobs=jobs.for_lane(OCR_LANE),
        clip_jobs=jobs,
        # The vectors this process holds come first too.
        clip_held=(lambda: pipeline.queued) if pipeline is not None else (lambda: 0),
        engine=OcrEngine(threads=settings.ocr_threads, device=settings.ocr_device),
        fetcher=fetcher,
        store=store,
        signed_urls=signed_urls,
        max_pixels=settings.max_image_pixels,
        max_bytes=settings.max_image_bytes,
        supervisor=supervisor,
    )


async def _load_clip(
    settings: Settings, loaded: Callable[[Encoder], Awaitable[None]] | None
) -> tuple[Encoder, EncoderService]:
    from retrieval.encoding.clip import Encoder  # torch: only where a model is opened

    load = functools.partial(
        Encoder.load,
        model=settings.clip_model,
        pretrained=settings.clip_pretrained,
        device=settings.clip_device,
        precision=settings.clip_precision,
        batch_size=settings.batch_size,
        calibration_cache=settings.precision_cache(),
        streams=settings.clip_streams,
    )
    log.info("loading the CLIP model %s (%s)", settings.clip_model, settings.clip_pretrained)
    model = await abandonable(load, name="clip-model-load")
    if loaded is not None:
        await loaded(model)
    return model, EncoderService(model)


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    engine: AsyncEngine,
    consume: bool = True,
    queries: bool = True,
    loaded: Callable[[Encoder], Awaitable[None]] | None = None,
    refresh: RefreshUrls | None = None,
    supervisor: Supervisor | None = None,
    stop_left: Callable[[], float] | None = None,
) -> AsyncIterator[Services]:
    """Everything started; on the way out, batches being encoded finish and the rest of the
    claimed jobs go back to the table within what ``stop_left()`` says is left of the stop's
    deadline (SHUTDOWN_DEADLINE_S when not given).

    The policy is read first: a database that refuses is told before the model is loaded.
    ``consume=False`` only queues images (a gateway process with ENCODE_IMAGES=false): the
    model is still loaded, for search queries, but no job is taken from the table.
    ``queries=False`` (a worker) encodes no search: the CLIP model is loaded only when the
    process takes the CLIP lane, and a worker that only reads (WORKER_LANES=ocr) never imports
    torch. Nothing it does depends on the CLIP model: a reading is keyed by its image, which has
    one row whatever model encoded it, so a model switch leaves it be. ``loaded`` is awaited
    with the model before any job is: it may refuse it by raising. ``refresh``
    exchanges expired attachment links (Discord's, passed in by the caller). The pipeline's
    and the store's tasks run under ``supervisor`` (the process's).

    What is opened is closed in the reverse order, whatever fails on the way: the OCR lane (a
    reading in hand abandoned and handed back), the CLIP lane, the HTTP session, the store,
    the model's threads.
    """
    policy = IndexPolicy(engine)
    await policy.load()
    lanes = settings.lanes() if consume else frozenset()
    left = stop_left or (lambda: settings.shutdown_deadline_s)
    supervisor = supervisor or Supervisor()
    async with contextlib.AsyncExitStack() as stack:
        model = encoder = None
        if queries or CLIP_LANE in lanes:
            model, encoder = await _load_clip(settings, loaded)
            stack.push_async_callback(encoder.close)
        store = open_store(
            engine, matrix_memory_mb=settings.matrix_memory_mb, supervisor=supervisor
        )
        stack.push_async_callback(store.close)
        downloads = settings.downloads(gpu=model is not None and model.device.type == "cuda")
        fetcher = await stack.enter_async_context(_fetcher(settings, downloads))
        jobs = JobQueue(
            engine,
            # Without a model this process queues nothing: only the CLIP lane's enqueue names
            # the model.
            model_id=model.model_id if model is not None else None,
            lease_s=settings.job_lease_s,
            retry=settings.retry_policy(),
            read_words=settings.ocr,
        )
        if consume and engine.dialect.name == "sqlite":
            # One process per SQLite file (a lock next to it says so): any claim left is a dead
            # process's.
            await jobs.release()
        pipeline = None
        if model is not None and encoder is not None:
            pipeline = IndexingPipeline(
                **_pipeline_settings(settings, model),
                fetch_workers=downloads[0],
                encoder=encoder,
                fetcher=fetcher,
                store=store,
                jobs=jobs,
                supervisor=supervisor,
                consume=CLIP_LANE in lanes,
                refresh=refresh,
            )
            await pipeline.start()
        # One refresher of Discord's links for both lanes.
        signed_urls = pipeline.signed_urls if pipeline is not None else SignedUrls(refresh)
        stack.push_async_callback(_close_clip_lane, pipeline, signed_urls, left)
        reading = None
        if OCR_LANE in lanes:
            reading = _reading_lane(
                settings,
                jobs=jobs,
                pipeline=pipeline,
                signed_urls=signed_urls,
                fetcher=fetcher,
                store=store,
                supervisor=supervisor,
            )
            await reading.start()  # the OCR models load: ModelUnavailable says why not
            stack.push_async_callback(_close_reading, reading, left)
        # Every process: the stored words follow the setting (the images stored before queued
        # for reading, or every word deleted; once), in the background: on a large index it
        # walks every row.
        switch = supervisor.start(
            "ocr-switch",
            functools.partial(apply_reading, on=settings.ocr, engine=engine, store=store),
        )
        stack.callback(switch.cancel)  # idempotent: the next start does what is left
        yield Services(
            settings=settings,
            engine=engine,
            supervisor=supervisor,
            model=model,
            encoder=encoder,
            store=store,
            fetcher=fetcher,
            jobs=jobs,
            pipeline=pipeline,
            policy=policy,
            cursors=BackfillCursors(engine),
            reading=reading,
        )


@contextlib.asynccontextmanager
async def _fetcher(settings: Settings, downloads: tuple[int, int]) -> AsyncIterator[Fetcher]:
    """The downloader of pictures, over one HTTP session of its own; ``downloads``: at once in
    all, and from one host."""
    total, per_host = downloads
    connector = aiohttp.TCPConnector(limit=total, limit_per_host=per_host)
    async with aiohttp.ClientSession(connector=connector) as http:
        yield Fetcher(
            http,
            allowed=settings.media_origins(),
            max_bytes=settings.max_image_bytes,
            timeout_s=settings.fetch_timeout_s,
            per_host=per_host,
            retries=settings.fetch_retries,
        )


def _pipeline_settings(settings: Settings, model: Encoder) -> dict:
    """What the CLIP lane's pipeline takes from the settings and the model."""
    return dict(
        spec=model.spec,
        max_pixels=settings.max_image_pixels,
        batch_size=settings.batch_size or model.default_batch_size,
        batch_deadline_s=settings.batch_deadline_ms / 1000,
        queue_size=settings.queue_size,
        decode_threads=settings.decode_threads,
        fetch_resized=settings.fetch_resized,
    )


async def _close_reading(reading: ReadingLane, left: Callable[[], float]) -> None:
    """A reading in hand is abandoned, and handed back: the CLIP lane's close keeps the rest
    of the deadline."""
    await reading.close(deadline_s=min(max(left() - _AFTER_PIPELINE_S, 0.0), 2.0))


async def _close_clip_lane(
    pipeline: IndexingPipeline | None, signed_urls: SignedUrls, left: Callable[[], float]
) -> None:
    """The pipeline closes the links' refresher it shares with the reading lane; without a
    pipeline, the refresher is closed alone."""
    if pipeline is not None:
        await pipeline.close(deadline_s=max(left() - _AFTER_PIPELINE_S, 0.0))
    else:
        await signed_urls.close()
