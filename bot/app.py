"""Builds the bot and everything it owns, opened and closed with `async with`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

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
from retrieval.encoder import Encoder
from retrieval.encoding import EncoderService
from retrieval.fetch import Fetcher
from retrieval.indexing import IndexingPipeline, JobQueue
from retrieval.policy import IndexPolicy
from retrieval.reindex import adopt_model
from retrieval.store import open_store

log = logging.getLogger(__name__)

@contextlib.asynccontextmanager
async def open_bot(settings: Settings) -> AsyncIterator[ClipfindBot]:
    """The bot with its database, model, HTTP session and pipeline; not yet connected."""
    apply_endpoints(settings)
    engine = create_engine(settings.database_url)
    try:
        await ensure_schema(engine)
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
                async with bot:
                    yield bot
            finally:
                await pipeline.close(deadline_s=settings.shutdown_deadline_s)
                await service.close()
                await store.close()
    finally:
        await engine.dispose()


async def run(settings: Settings) -> int:
    """Run until stopped; returns the process exit status.

    The token is checked, then tried with Discord, before the database and the model are
    touched: a wrong token or a refused intent costs seconds, not a model download.
    """
    token = token_of(settings)
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
        try:
            await bot.start(token)
        except discord.PrivilegedIntentsRequired:
            log.critical(INTENT_REFUSED)
            return 2
        except discord.LoginFailure:
            log.critical(TOKEN_REFUSED)
            return 2
    return 0
