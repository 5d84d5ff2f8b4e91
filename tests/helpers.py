"""What tests share: the real bot, started as `python -m bot` starts it, against the Discord
stand-in with the tiny CLIP model and a fresh SQLite database; waiting for a condition; asking
`/find` and reading its answers; pictures to post; loopback HTTP servers."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from bot.app import open_bot
from bot.client import ClipfindBot
from retrieval.config import Settings, load_settings
from tests.fakediscord import Attachment, FakeDiscord
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH
from tests.tinyclip.shapes import draw, jpeg_bytes, png_bytes


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
        # Reading words is a lane of its own, tested where it is asked for (ocr=True): the
        # other tests count downloads and jobs of the CLIP lane alone.
        ocr=False,
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
    await dispatched(bot, fd)
    await bot.pipeline.join()


async def dispatched(bot: ClipfindBot, fd: FakeDiscord, within: float = 30.0) -> None:
    """The bot parsed every event the stand-in has written to it, and its listeners returned.

    discord.py sets a shard's websocket `sequence` as it reads an event and parses it before
    reading on; each listener then runs in a task named ``discord.py: <event>``."""
    sent = fd.sent_sequences()

    async def caught_up() -> bool:
        # The bot is an AutoShardedBot: its shards' websockets are kept in a private dict.
        sockets = [shard.ws for shard in bot._AutoShardedClient__shards.values()]
        if any(ws.sequence is None or ws.sequence < sent.get(ws.session_id, 0) for ws in sockets):
            return False
        return not any(
            task.get_name().startswith("discord.py: ") and not task.done()
            for task in asyncio.all_tasks()
        )

    await eventually(caught_up, within)


async def backfilled(bot: ClipfindBot, within: float = 30.0) -> None:
    """History is read (every page's images queued) and what was queued is indexed."""
    await asyncio.wait_for(bot.backfill.wait_idle(), within)
    await asyncio.wait_for(bot.pipeline.join(), within)


async def count_is(bot: ClipfindBot, guild_id: int, n: int, within: float = 20.0) -> None:
    """Wait until the server has ``n`` images stored."""

    async def check() -> bool:
        return await bot.store.count(guild_id=guild_id) == n

    await eventually(check, within)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.asynccontextmanager
async def loopback_server(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]], *, route: str = "/{tail:.*}"
) -> AsyncIterator[int]:
    """An HTTP server on 127.0.0.1 answering GETs of ``route`` with ``handle``; yields its port."""
    app = web.Application()
    app.router.add_get(route, handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


JUMP = re.compile(r"https://discord\.com/channels/(\d+)/(\d+)/(\d+)")
MESSAGE_GET = re.compile(r"^/channels/\d+/messages/\d+$")


def picture(colour: str, shape: str, seed: int, *, jpeg: bool = False, size: int = 160):
    image = draw(colour, shape, size=size, rng=seed)
    if jpeg:
        return Attachment(f"{colour}-{shape}.jpg", jpeg_bytes(image), "image/jpeg")
    return Attachment(f"{colour}-{shape}.png", png_bytes(image), "image/png")


async def find(fd, guild, where, member, query: str, **options) -> dict:
    """The answer ``member`` sees to `/find` asked in channel ``where``."""
    interaction = await fd.invoke_slash(guild, where, member, "find", {"query": query, **options})
    return await interaction.wait_reply(timeout=30)


def result_ids(reply: dict) -> list[int]:
    """Message ids of the results, in the order shown (the first jump link of each embed)."""
    return [int(JUMP.search(e["description"]).group(3)) for e in reply["embeds"]]


def message_fetches(fd) -> int:
    """REST reads of single messages so far (what confirming a result costs)."""
    return sum(1 for r in fd.requests if r.method == "GET" and MESSAGE_GET.match(r.path))


def buttons(reply: dict) -> dict[str, bool]:
    """custom_id -> enabled, for every button on the answer."""
    return {
        item["custom_id"]: not item.get("disabled", False)
        for row in reply.get("components", [])
        for item in row.get("components", [])
    }
