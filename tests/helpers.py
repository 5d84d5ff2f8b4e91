"""Harness for end-to-end tests: the real bot, started as `python -m bot` starts it, against the
Discord stand-in, with the tiny CLIP model and a fresh SQLite database."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from bot.app import open_bot
from bot.client import ClipfindBot
from retrieval.config import Settings, load_settings
from tests.fakediscord import FakeDiscord
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH


def bot_settings(fd: FakeDiscord, db_dir: Path, **overrides) -> Settings:
    values = dict(
        _env_file=None,  # a developer's .env must not leak into tests
        discord_token=fd.token,
        discord_api_base=fd.api_base,
        discord_gateway_url=fd.gateway_url,
        discord_media_origins=fd.cdn_origin,
        database_url=f"sqlite+aiosqlite:///{db_dir}/clipfind.db",
        clip_model=str(CONFIG_PATH),
        clip_pretrained=str(CHECKPOINT_PATH),
        clip_device="cpu",
        batch_deadline_ms=10,
    )
    values.update(overrides)
    return load_settings(**values)


@contextlib.asynccontextmanager
async def running_bot(settings: Settings, fd: FakeDiscord) -> AsyncIterator[ClipfindBot]:
    async with open_bot(settings) as bot:
        task = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
        try:
            await fd.wait_ready(timeout=30)
            await asyncio.wait_for(bot.wait_until_ready(), 30)
            yield bot
        finally:
            await bot.close()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def running_bots(
    all_settings: list[Settings], fd: FakeDiscord, *, within: float = 60.0
) -> AsyncIterator[list[ClipfindBot]]:
    """Several bots (processes of one cluster), loaded first, then started at the same moment."""
    async with contextlib.AsyncExitStack() as stack:
        bots = [await stack.enter_async_context(open_bot(s)) for s in all_settings]
        tasks = [
            asyncio.create_task(b.start(s.discord_token.get_secret_value()))
            for b, s in zip(bots, all_settings, strict=True)
        ]
        ready = asyncio.ensure_future(asyncio.gather(*(b.wait_until_ready() for b in bots)))
        try:
            done, _ = await asyncio.wait(
                [ready, *tasks], timeout=within, return_when=asyncio.FIRST_COMPLETED
            )
            if ready not in done:
                for task in done:
                    task.result()  # a bot that stopped before it was ready says why
                raise TimeoutError(f"the bots were not ready within {within:g} s")
            yield bots
        finally:
            ready.cancel()
            for b in bots:
                await b.close()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@contextlib.asynccontextmanager
async def bot_world(db_dir: Path, **fake_options) -> AsyncIterator[tuple[FakeDiscord, ClipfindBot]]:
    """A Discord stand-in with the bot running against it on a fresh database."""
    async with FakeDiscord(**fake_options) as fd, running_bot(bot_settings(fd, db_dir), fd) as bot:
        yield fd, bot


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    """Wait until ``check()`` holds: the bot works on events in its own time."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def settled(bot: ClipfindBot, fd: FakeDiscord) -> None:
    """Every event sent so far reached the bot and every image it queued is indexed."""
    await fd.flush()
    await asyncio.sleep(0.1)  # let the gateway reader dispatch what arrived
    await bot.pipeline.join()


async def backfilled(bot: ClipfindBot, within: float = 30.0) -> None:
    """History is read (every page's images queued) and what was queued is indexed."""
    await asyncio.wait_for(bot.backfill.wait_idle(), within)
    await asyncio.wait_for(bot.pipeline.join(), within)
