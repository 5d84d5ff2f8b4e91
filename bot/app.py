"""Builds the bot and everything it owns, opened and closed with `async with`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable

import discord

from bot.client import ClipfindBot
from bot.link_refresh import rest_refresher
from bot.startup import (
    INTENT_REFUSED,
    SHARD_REFUSED,
    TOKEN_REFUSED,
    DiscordRefused,
    apply_endpoints,
    check_with_discord,
    token_of,
)
from retrieval.config import Settings
from retrieval.database import (
    DatabaseFile,
    check_sole_process,
    close_engine,
    create_engine,
    ensure_schema,
    sole_process,
)
from retrieval.errors import ConfigError
from retrieval.indexing import adopt_model
from retrieval.runtime import Stop, open_services, operator_view, stoppable
from retrieval.shards import listed

log = logging.getLogger(__name__)

# The exit status after the SQLite file vanished or was swapped under the running bot.
DATABASE_LOST_STATUS = 3


@contextlib.asynccontextmanager
async def open_bot(
    settings: Settings, *, stop_left: Callable[[], float] | None = None
) -> AsyncIterator[ClipfindBot]:
    """The bot with its database, model, HTTP session and pipeline; not yet connected.

    ``stop_left`` tells, on the way out, how much of SHUTDOWN_DEADLINE_S the stop has left."""
    if problem := settings.encoding_problem():
        raise ConfigError(problem)
    apply_endpoints(settings)
    sqlite_path = settings.sqlite_path()
    # Before the engine exists: opening a missing SQLite file would create an empty one.
    database = (
        DatabaseFile.claim(sqlite_path, required_id=settings.installation_id)
        if sqlite_path
        else None
    )
    with sole_process(database.path) if database else contextlib.nullcontext():
        if database:
            database.create_if_new()
        engine = create_engine(
            database.engine_url(settings.database_url) if database else settings.database_url,
            **settings.engine_options(),
        )
        try:
            await ensure_schema(engine)
            if database:
                await database.record(engine)
            async with (
                rest_refresher(settings) as refresh,
                open_services(
                    settings,
                    engine=engine,
                    consume=settings.encode_images,
                    refresh=refresh,
                    stop_left=stop_left,
                ) as services,
            ):
                bot = ClipfindBot(
                    services=services,
                    database=database,
                    reindexing=await adopt_model(engine, services.store, services.model.model_id),
                )
                async with (
                    bot,
                    _stop_if_lost(
                        bot, database=database, interval_s=settings.database_check_interval_s
                    ),
                    operator_view(
                        engine=engine,
                        role="bot",
                        # A process that only queues is no consumer: it would show as a stalled one.
                        pipeline=services.pipeline if services.pipeline.consumes else None,
                        settings=settings,
                        supervisor=services.supervisor,
                        shards=lambda: shards_of(bot),
                        reading=services.reading,
                    ),
                ):
                    yield bot
        finally:
            await close_engine(engine)


def shards_of(bot: discord.Client) -> str | None:
    """The gateway shards this process runs, as "0, 1 of 4"; None when it runs unsharded."""
    if not bot.shard_count:
        return None
    ids = [i for i in getattr(bot, "shard_ids", None) or [bot.shard_id] if i is not None]
    return listed(ids, bot.shard_count) if ids else f"? of {bot.shard_count}"


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
    touched: a wrong token or a refused intent costs seconds, not a model download. A signal
    before the bot starts cancels all that, and the process exits 0 without starting.
    """
    return await stoppable(
        functools.partial(_run, settings), deadline_s=settings.shutdown_deadline_s
    )


async def _run(settings: Settings, stop: Stop) -> int:
    token = token_of(settings)
    if problem := settings.encoding_problem():
        raise ConfigError(problem)
    if sqlite_path := settings.sqlite_path():
        # Local and cheap, and creates nothing: a lost database, or one another process runs
        # on, is told before Discord is asked.
        DatabaseFile.claim(sqlite_path, required_id=settings.installation_id)
        check_sole_process(sqlite_path)
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
    async with open_bot(settings, stop_left=stop.left) as bot:
        # Leaving open_bot then lets the batches being encoded finish and hands the rest of the
        # claimed work back to the jobs table, within SHUTDOWN_DEADLINE_S; the process exits 0.
        stop.started(lambda: asyncio.get_running_loop().create_task(bot.close()))
        try:
            await bot.start(token)
        except discord.PrivilegedIntentsRequired:
            log.critical(INTENT_REFUSED)
            return 2
        except discord.LoginFailure:
            log.critical(TOKEN_REFUSED)
            return 2
        except discord.ConnectionClosed as exc:
            if exc.code not in SHARD_REFUSED:
                raise
            log.critical(SHARD_REFUSED[exc.code])
            return 2
    return bot.exit_status
