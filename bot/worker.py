"""An encoder worker: no Discord connection, it takes image jobs from the database queue,
downloads, decodes and encodes them in batches on its GPU or CPU, and stores the vectors.

Gateway processes queue the images (`ENCODE_IMAGES=false` leaves all encoding to workers); any
number of workers drain the one queue side by side on PostgreSQL, each claiming rows for a lease.
A worker that dies loses nothing: its claims run out and another worker takes them again, and a
vector is stored in the transaction that deletes its job, so each image is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from retrieval.backoff import patiently
from retrieval.config import Settings
from retrieval.database import (
    UPGRADE_HINT,
    check_schema,
    close_engine,
    create_engine,
    database_errors,
    get_state,
)
from retrieval.errors import ConfigError, StoreUnavailable
from retrieval.indexing import (
    INDEX_MODEL_KEY,
    JOBS_CHANNEL,
    PipelineCounters,
    RefreshUrls,
)
from retrieval.runtime import Services, Stop, freeze_heap, open_services, operator_view

if TYPE_CHECKING:
    from retrieval.encoding import Encoder  # torch: a worker that only reads never imports it

log = logging.getLogger(__name__)

NEEDS_POSTGRES = (
    "a worker is a process of its own next to the bot, and SQLite serves one process only: run "
    "the bot and its workers on PostgreSQL (DATABASE_URL=postgresql+asyncpg://...). A single bot "
    "on SQLite encodes its images itself and needs no worker"
)
REPORT_EVERY_S = 60.0
MODEL_CHECK_S = 30.0
_WAIT_FIRST_S, _WAIT_MAX_S = 1.0, 30.0
_LISTEN_CHECK_S = 10.0


async def run_worker(
    settings: Settings, *, refresh: RefreshUrls | None = None, stop: Stop | None = None
) -> int:
    """Drain the jobs table until stopped; returns the process exit status: 0, or 2 once the
    bot switched the index to another model (1 after an internal error).

    ``refresh`` exchanges expired signed attachment URLs for fresh ones (Discord's, passed in by
    the caller); without it an image whose link expired is dropped as gone. ``stop`` is the
    process's (SIGTERM, SIGINT): told once the worker runs, it stops it from then on."""
    check_worker_settings(settings)
    stopping = asyncio.Event()
    status = 0
    engine = create_engine(settings.database_url, **settings.engine_options())
    try:
        if not await _schema_ready(engine, stop=stopping):
            return 0
        loaded = functools.partial(_refuse_another_model, engine)
        async with (
            open_services(
                settings,
                engine=engine,
                queries=False,
                loaded=loaded,
                refresh=refresh,
                stop_left=stop.left if stop is not None else None,
            ) as services,
            operator_view(
                engine=engine,
                role="worker",
                pipeline=services.pipeline,
                settings=settings,
                supervisor=services.supervisor,
                reading=services.reading,
            ),
        ):
            freeze_heap()
            log.info(
                "encoder worker started, lanes %s: %s; database %s; taking queued jobs until "
                "stopped",
                ",".join(sorted(settings.lanes())),
                _what_runs(services),
                database_name(engine),
            )
            if stop is not None:
                stop.started(stopping.set)
            start = services.supervisor.start
            tasks = [
                start("worker-report", functools.partial(_report, services)),
                start("worker-listen", functools.partial(_woken, engine, _Lanes(services))),
                asyncio.create_task(stopping.wait(), name="worker-stop"),
            ]
            switched = None
            if services.model is not None:  # what it encodes must be the index's model
                switched = start(
                    "worker-model",
                    functools.partial(_model_switched, engine, services.model.model_id),
                )
                tasks.append(switched)
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if task.exception() is not None:  # a bug: say where, and stop
                    error = task.exception()
                    log.critical("stopping: %s failed", task.get_name(), exc_info=error)
                    status = 1
                elif task is switched:
                    log.critical("stopping: %s", switched.result())
                    status = 2
    finally:
        await close_engine(engine)
    log.info("encoder worker stopped")
    return status


def _what_runs(services: Services) -> str:
    """The models this worker runs, where, for its first log line."""
    parts = []
    if (model := services.model) is not None and services.pipeline is not None:
        parts.append(
            f"model {model.model_id}, on {model.device} in {model.precision}, batches of "
            f"{services.pipeline.batch_size}"
        )
    if (reading := services.reading) is not None:
        parts.append(f"reading with {reading.engine.model_id} on {reading.engine.device}")
    if services.model is None:
        parts.append("no CLIP model loaded")
    return "; ".join(parts)


def check_worker_settings(settings: Settings) -> None:
    """Refuse at once what no worker can run with (ConfigError), before anything is opened."""
    if settings.database_url.startswith("sqlite"):
        raise ConfigError(NEEDS_POSTGRES)


def database_name(engine: AsyncEngine) -> str:
    """host/database, without the password; a unix socket's folder stands for the host."""
    url = engine.url
    host = url.host or url.query.get("host") or "localhost"
    return f"{host}/{url.database or ''}"


async def _schema_ready(engine: AsyncEngine, *, stop: asyncio.Event) -> bool:
    """Wait for a database at this code's schema; False when stopped meanwhile.

    A database that is away (not up yet, restarting) or still empty is waited for: the bot
    creates the schema, and two processes creating it at once would collide. A schema behind or
    ahead of this code raises SchemaError, as it stops the bot.
    """
    delay = _WAIT_FIRST_S
    while True:
        try:
            if await check_schema(engine) is not None:
                return True
            log.warning(
                "the database %s has no clipfind schema yet; waiting for the bot to create it "
                "(or run `%s`), trying again in %.0fs",
                database_name(engine),
                UPGRADE_HINT,
                delay,
            )
        except StoreUnavailable as exc:
            log.error(
                "cannot reach the database %s, trying again in %.0fs: %s",
                database_name(engine),
                delay,
                exc,
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return False
        delay = min(delay * 2, _WAIT_MAX_S)


async def _refuse_another_model(engine: AsyncEngine, encoder: Encoder) -> None:
    """The index is searched with the bot's model: vectors of another are never found.

    Asked right after the model loaded (seconds after the schema was checked): a database that
    went away meanwhile is waited for, as at the schema check, not taken for a reason to stop."""

    async def recorded_model() -> str | None:
        with database_errors():
            return await get_state(engine, INDEX_MODEL_KEY)

    def waiting(exc: StoreUnavailable, delay: float) -> None:
        log.error(
            "cannot reach the database %s to check the index's model, trying again in %.0fs: %s",
            database_name(engine),
            delay,
            exc,
        )

    recorded = await patiently(recorded_model, waiting=waiting, max_s=_WAIT_MAX_S)
    if recorded is not None and recorded != encoder.model_id:
        raise ConfigError(
            f"the index is built with the model {recorded}, and this worker loaded "
            f"{encoder.model_id}: give it the bot's CLIP_MODEL and CLIP_PRETRAINED (after a "
            "model switch, start the bot first)"
        )


class _Lanes:
    """Wakes every lane this worker takes: the vectors' pipeline, and the reading lane."""

    def __init__(self, services: Services) -> None:
        self._services = services

    def wake(self) -> None:
        if self._services.pipeline is not None:
            self._services.pipeline.wake()
        if self._services.reading is not None:
            self._services.reading.wake()


async def _woken(engine: AsyncEngine, lanes: _Lanes) -> None:
    """Wake the lanes whenever a process queues jobs (PostgreSQL NOTIFY), so an image posted
    is taken at once rather than at the lanes' next look at the table (once a second)."""
    import asyncpg

    def wake(*_: object) -> None:
        lanes.wake()

    while True:
        try:
            async with engine.connect() as conn:
                listening = (await conn.get_raw_connection()).driver_connection
                await listening.add_listener(JOBS_CHANNEL, wake)
                try:
                    lanes.wake()  # whatever was queued while no one listened
                    while True:  # a lost connection shows here; the pipeline polls meanwhile
                        await asyncio.sleep(_LISTEN_CHECK_S)
                        await listening.execute("SELECT 1")
                finally:
                    with contextlib.suppress(Exception):  # going back to the pool, or gone
                        await listening.remove_listener(JOBS_CHANNEL, wake)
        except (SQLAlchemyError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.debug("not listening for queued jobs (polling meanwhile): %s", exc)
        await asyncio.sleep(_LISTEN_CHECK_S)


async def _model_switched(engine: AsyncEngine, model_id: str) -> str:
    """Returns once the bot records another model for the index (a model switch while this
    worker runs): what it would encode from then on could never be found."""
    while True:
        await asyncio.sleep(MODEL_CHECK_S)
        try:
            with database_errors():
                recorded = await get_state(engine, INDEX_MODEL_KEY)
        except StoreUnavailable:
            continue  # the pipeline says so and waits; this looks again next time
        if recorded is not None and recorded != model_id:
            return (
                f"the index is now built with the model {recorded}, and this worker encodes "
                f"with {model_id}: restart it with the bot's CLIP_MODEL and CLIP_PRETRAINED"
            )


async def _report(services: Services) -> None:
    """Every minute that saw work: this worker's own throughput, lane by lane (the operator view
    logs the cluster's backlog)."""
    lanes = _worked_lanes(services)
    before, since = [_done(c) for _, c, _ in lanes], time.monotonic()
    while True:
        await asyncio.sleep(REPORT_EVERY_S)
        done, now = [_done(c) for _, c, _ in lanes], time.monotonic()
        if done == before:
            since = now
            continue
        seconds = now - since
        said = [
            _lane_report(name, counters, held(), n=now_done - then, seconds=seconds)
            for (name, counters, held), now_done, then in zip(lanes, done, before, strict=True)
        ]
        log.info("encoder worker, the last %.0fs: %s", seconds, "; ".join(said))
        before, since = done, now


def _worked_lanes(services: Services) -> list[tuple[str, PipelineCounters, Callable[[], int]]]:
    """(lane, its counters, the jobs it holds) for each lane this worker takes."""
    lanes = []
    if (pipeline := services.pipeline) is not None and pipeline.consumes:
        lanes.append(("vectors", pipeline.counters, lambda: pipeline.queued))
    if (reading := services.reading) is not None:
        lanes.append(("words", reading.counters, lambda: reading.held))
    return lanes


def _lane_report(
    lane: str, counters: PipelineCounters, held: int, *, n: int, seconds: float
) -> str:
    failed = sum(counters.failed.values())
    if lane == "vectors":
        done = f"{counters.indexed} encoded, {counters.reused} reposts reused, {failed} skipped"
    else:
        done = f"{counters.indexed} read, {counters.reused} copied, {failed} unreadable"
    return f"{lane}: {n} ({n / seconds:.1f}/s), since start {done}, {held} in hand"


def _done(counters: PipelineCounters) -> int:
    return counters.indexed + counters.reused + sum(counters.failed.values())
