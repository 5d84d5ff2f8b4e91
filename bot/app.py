"""Builds the bot and everything it owns, opened and closed with `async with`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import discord
import yarl

from bot.client import ClipfindBot
from retrieval.config import Settings
from retrieval.db import create_engine, ensure_schema
from retrieval.dbfile import DatabaseFile
from retrieval.encoder import Encoder
from retrieval.encoding import EncoderService
from retrieval.errors import ConfigError
from retrieval.fetch import Fetcher
from retrieval.pipeline import IndexingPipeline
from retrieval.policy import IndexPolicy
from retrieval.reindex import adopt_model
from retrieval.store import open_store

log = logging.getLogger(__name__)

INTENT_REFUSED = (
    "Discord refused the Message Content intent, without which it sends no attachments. Enable "
    "it in the Discord Developer Portal: your application → Bot → Privileged Gateway Intents → "
    "Message Content Intent, then start the bot again."
)
TOKEN_REFUSED = (
    "Discord rejected DISCORD_TOKEN. Copy the bot token again from the Developer Portal."
)
# The exit status after the SQLite file vanished or was swapped under the running bot.
DATABASE_LOST_STATUS = 3


def apply_endpoints(settings: Settings) -> None:
    """Route Discord traffic through the configured REST base and gateway (proxies, tests)."""
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base.rstrip("/")
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


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
        store = open_store(engine)
        connector = aiohttp.TCPConnector(
            limit=settings.fetch_concurrency, limit_per_host=settings.fetch_per_host
        )
        async with aiohttp.ClientSession(connector=connector) as http:
            fetcher = Fetcher(
                http,
                max_bytes=settings.max_image_bytes,
                timeout_s=settings.fetch_timeout_s,
                per_host=settings.fetch_per_host,
                retries=settings.fetch_retries,
            )
            pipeline = IndexingPipeline(
                fetcher=fetcher,
                encoder=service,
                store=store,
                spec=encoder.spec,
                max_pixels=settings.max_image_pixels,
                batch_size=settings.batch_size or encoder.default_batch_size,
                batch_deadline_s=settings.batch_deadline_ms / 1000,
                queue_size=settings.queue_size,
                fetch_workers=settings.fetch_concurrency,
                decode_threads=settings.decode_threads,
                admit=lambda ref: policy.allows(
                    channel_id=ref.channel_id, author_id=ref.author_id, parent_id=ref.parent_id
                ),
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
                await pipeline.close()
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
    """Run until stopped; returns the process exit status."""
    if settings.discord_token is None:
        raise ConfigError("DISCORD_TOKEN is required (see .env.example)")
    async with open_bot(settings) as bot:
        try:
            await bot.start(settings.discord_token.get_secret_value())
        except discord.PrivilegedIntentsRequired:
            log.critical(INTENT_REFUSED)
            return 2
        except discord.LoginFailure:
            log.critical(TOKEN_REFUSED)
            return 2
    return bot.exit_status
