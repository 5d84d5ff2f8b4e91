"""Builds the bot and everything it owns, opened and closed with `async with`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Iterator

import aiohttp
import discord

from bot.client import ClipfindBot
from bot.startup import (
    INTENT_REFUSED,
    TOKEN_REFUSED,
    DiscordRefused,
    apply_endpoints,
    check_with_discord,
    token_of,
)
from retrieval.config import Settings
from retrieval.db import create_engine, ensure_schema
from retrieval.dbfile import DatabaseFile
from retrieval.encoder import Encoder
from retrieval.encoding import EncoderService
from retrieval.fetch import Fetcher
from retrieval.indexing import IndexingPipeline, JobQueue
from retrieval.policy import IndexPolicy
from retrieval.reindex import adopt_model
from retrieval.store import open_store

log = logging.getLogger(__name__)

# The exit status after the SQLite file vanished or was swapped under the running bot.
DATABASE_LOST_STATUS = 3


@contextlib.asynccontextmanager
async def open_bot(settings: Settings) -> AsyncIterator[ClipfindBot]:
    """The bot with its database, model, HTTP session and pipeline; not yet connected."""
    apply_endpoints(settings)
    sqlite_path = settings.sqlite_path()
    # Before the engine exists: opening a missing SQLite file would create an empty one.
    database = (
        DatabaseFile.claim(sqlite_path, required_id=settings.installation_id)
        if sqlite_path
        else None
    )
    if database:
        database.create_if_new()
    engine = create_engine(
        database.engine_url(settings.database_url) if database else settings.database_url
    )
    try:
        await ensure_schema(engine)
        if database:
            await database.record(engine)
        policy = IndexPolicy(engine)
        await policy.load()
        encoder = await asyncio.to_thread(
            Encoder.load,
            model=settings.clip_model,
            pretrained=settings.clip_pretrained,
            device=settings.clip_device,
            precision=settings.clip_precision,
        )
        service = EncoderService(encoder)
        store = open_store(engine, matrix_memory_mb=settings.matrix_memory_mb)
        connector = aiohttp.TCPConnector(
            limit=settings.fetch_concurrency, limit_per_host=settings.fetch_per_host
        )
        async with aiohttp.ClientSession(connector=connector) as http:
            fetcher = Fetcher(
                http,
                allowed=settings.media_origins(),
                max_bytes=settings.max_image_bytes,
                timeout_s=settings.fetch_timeout_s,
                per_host=settings.fetch_per_host,
                retries=settings.fetch_retries,
            )
            jobs = JobQueue(
                engine,
                model_id=encoder.model_id,
                lease_s=settings.job_lease_s,
                retry=settings.retry_policy(),
            )
            if engine.dialect.name == "sqlite":
                # One process per SQLite file: any claim left is a dead process's.
                await jobs.release()
            pipeline = IndexingPipeline(
                fetcher=fetcher,
                encoder=service,
                store=store,
                jobs=jobs,
                spec=encoder.spec,
                max_pixels=settings.max_image_pixels,
                batch_size=settings.batch_size or encoder.default_batch_size,
                batch_deadline_s=settings.batch_deadline_ms / 1000,
                queue_size=settings.queue_size,
                fetch_workers=settings.fetch_concurrency,
                decode_threads=settings.decode_threads,
            )
            await pipeline.start()
            try:
                bot = ClipfindBot(
                    settings=settings,
                    engine=engine,
                    store=store,
                    encoder=service,
                    pipeline=pipeline,
                    policy=policy,
                )
                bot.reindexing = await adopt_model(engine, store, encoder.model_id)
                async with (
                    bot,
                    _stop_if_lost(
                        bot, database=database, interval_s=settings.database_check_interval_s
                    ),
                ):
                    yield bot
            finally:
                await pipeline.close(deadline_s=settings.shutdown_deadline_s)
                await service.close()
                await store.close()
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def _stop_if_lost(
    bot: ClipfindBot, *, database: DatabaseFile | None, interval_s: float
) -> AsyncIterator[None]:
    """Stop the bot once its SQLite file is deleted or replaced, rather than write into the void."""
    if not database:
        yield
        return

    async def watchdog() -> None:
        problem = await database.watch(interval_s=interval_s)
        log.critical(
            "stopping: %s. Nothing written now would be kept; restore the database from a "
            "backup before starting again",
            problem,
        )
        bot.exit_status = DATABASE_LOST_STATUS
        await bot.close()

    task = asyncio.create_task(watchdog())
    try:
        yield
    finally:
        if not bot.exit_status:
            task.cancel()  # still watching; a stop it started is left to finish
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def run(settings: Settings) -> int:
    """Run until stopped; returns the process exit status.

    The token is checked, then tried with Discord, before the database and the model are
    touched: a wrong token or a refused intent costs seconds, not a model download.
    """
    token = token_of(settings)
    if sqlite_path := settings.sqlite_path():
        # Local and cheap, and creates nothing: a lost database is told before Discord is asked.
        DatabaseFile.claim(sqlite_path, required_id=settings.installation_id)
    try:
        app = await check_with_discord(settings)
    except DiscordRefused as exc:
        log.critical("%s", exc)
        return 2
    log.info(
        "Discord accepted the token of %s (application %d); loading the database and the model",
        app.name,
        app.application_id,
    )
    async with open_bot(settings) as bot:
        with _stopped_by_signals(bot):
            try:
                await bot.start(token)
            except discord.PrivilegedIntentsRequired:
                log.critical(INTENT_REFUSED)
                return 2
            except discord.LoginFailure:
                log.critical(TOKEN_REFUSED)
                return 2
    return bot.exit_status


@contextlib.contextmanager
def _stopped_by_signals(bot: ClipfindBot) -> Iterator[None]:
    """SIGTERM (docker stop, systemd) and SIGINT close the gateway; leaving open_bot then lets
    the batches being encoded finish (SHUTDOWN_DEADLINE_S) and hands the rest of the claimed
    work back to the jobs table, and the process exits 0."""
    loop = asyncio.get_running_loop()

    def stop(sig: signal.Signals) -> None:
        log.info("received %s: finishing the work in hand, then stopping", sig.name)
        loop.create_task(bot.close())

    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop, sig)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
