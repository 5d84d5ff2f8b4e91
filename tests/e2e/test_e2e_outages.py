"""End to end: the database stalls under a running bot (a lock held longer than the pool's
timeout, so every connection is busy and more are asked for) or goes away altogether (PostgreSQL
stopped under a bot and a worker) while images are posted. It is an outage, waited out: once it
is over every image is indexed, by the same processes, with no task lost, and the restarts
counter says what had to be started again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3

import aiohttp
import asyncpg
import pytest
from sqlalchemy import make_url

from retrieval.database.engine import create_engine, ensure_schema
from tests.conftest import embedded_server, postgres_url
from tests.fakediscord import FakeDiscord
from tests.helpers import bot_settings, eventually, free_port, picture, running_bot, settled
from tests.pgserver import Restartable
from tests.processes import Process, clipfind_env

EARLY = LATE = 4  # images posted before the lock, and while it is held
# How long PostgreSQL stays down (at least: until both processes noticed, too); five times the
# pool timeout the processes are given, and past the first steps of every backoff.
OUTAGE_S = 10.0
PIPELINE_TASKS = ("clip-feed", "clip-fetch", "clip-batch", "clip-lease")


@pytest.fixture(
    params=[("sqlite", None), ("postgres", "index_jobs"), ("postgres", "images")],
    ids=["sqlite-write-lock", "postgres-index_jobs", "postgres-images"],
)
def locked(request, tmp_path) -> tuple[str, str | None]:
    """(database URL, the table a PostgreSQL test locks; None: SQLite's write lock)."""
    kind, table = request.param
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/clipfind.db", None
    engine = request.getfixturevalue("postgres_engine")
    return engine.url.render_as_string(hide_password=False), table


@contextlib.asynccontextmanager
async def lock_held(url: str, table: str | None):
    """What an operator's VACUUM FULL or a long migration does: PostgreSQL's ACCESS EXCLUSIVE
    lock on one table (nothing reads or writes it), or SQLite's write lock on the file."""
    if table is None:
        path = make_url(url).database
        db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        await asyncio.to_thread(db.execute, "BEGIN IMMEDIATE")
        try:
            yield
        finally:
            await asyncio.to_thread(db.execute, "ROLLBACK")
            db.close()
        return
    parsed = make_url(url)
    conn = await asyncpg.connect(
        user="postgres", database=parsed.database, host=parsed.query["host"]
    )
    try:
        await conn.execute("BEGIN")
        await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield
        await conn.execute("ROLLBACK")
    finally:
        await conn.close()


async def test_a_lock_longer_than_the_pool_timeout_is_waited_out_and_nothing_is_lost(
    locked, tmp_path, caplog
):
    url, table = locked
    metrics = free_port()
    caplog.set_level(logging.WARNING)
    async with FakeDiscord() as fd:
        settings = bot_settings(
            fd,
            tmp_path,
            database_url=url,
            backfill=False,
            # Two connections, given up after a second: a lock fills the pool at once.
            database_pool_max=2,
            database_pool_timeout_s=1.0,
            fetch_concurrency=2,
            retry_first_s=0.5,
            metrics_port=metrics,
            metrics_addr="127.0.0.1",
        )
        guild = fd.add_guild("Locked")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        async with running_bot(settings, fd) as bot:
            # Early images are claimed before the lock and their downloads answer during it.
            early = [fd.host_external_image(f"e{i}.png", _png(i), "image/png") for i in range(4)]
            for link in early:
                fd.set_cdn_fault(link, delay=4.0)
                await fd.post_message(general, alice, link, embeds=[fd.image_embed(link)])
            await eventually(lambda: _is(bot.pipeline.queued == EARLY), within=30)

            async with lock_held(url, table):
                for i in range(LATE):
                    attachment = picture("red", "star", 100 + i)
                    await fd.post_message(general, alice, "", attachments=[attachment])
                # Held until the pool ran dry: a statement found no free connection in time.
                await eventually(lambda: _is("QueuePool limit" in caplog.text), within=60)
                await eventually(lambda: _is(_served(fd, early) >= 2), within=30)

            await eventually(lambda: _rows_are(url, EARLY + LATE), within=90)
            assert all(bot.supervisor.running(task) for task in PIPELINE_TASKS)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{metrics}/healthz") as response:
                    assert (response.status, await response.text()) == (200, "ok\n")
                async with http.get(f"http://127.0.0.1:{metrics}/metrics") as response:
                    scraped = _restarts(await response.text())
        # The counter tells what was started again: each restart logged once, nothing else.
        assert scraped == dict(bot.supervisor.restarts)
        failures = [r for r in caplog.records if re.match(r"task \S+ failed", r.getMessage())]
        assert len(failures) == sum(scraped.values())
        # A full pool is an outage: the pipeline waited, none of its tasks failed.
        assert not set(scraped) & set(PIPELINE_TASKS)
        assert "no free database connection" in caplog.text


async def test_postgres_stopped_mid_burst_loses_nothing_and_both_processes_live(tmp_path):
    """A bot and an encoder worker; PostgreSQL stops in the middle of a burst of posts and comes
    back after more were posted: every image is stored once, and neither process died."""
    # A server of its own, stopped and started again; deleted with everything in it after.
    with embedded_server("clipfind-outage-", citus=False) as server:
        url = postgres_url(server, "postgres")
        postgres = Restartable(server)
        engine = create_engine(url)
        await ensure_schema(engine)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(engine.dispose)
            fd = await stack.enter_async_context(FakeDiscord())
            guild = fd.add_guild("Outage")
            general = guild.add_text_channel("general")
            alice = guild.add_member("alice")
            ports = free_port(), free_port()
            common = dict(BACKFILL="false", DATABASE_POOL_TIMEOUT_S="2", METRICS_ADDR="127.0.0.1")
            bot = await Process.start(
                tmp_path, clipfind_env(fd, url, HEALTH_PORT=str(ports[0]), **common)
            )
            worker = await Process.start(
                tmp_path, clipfind_env(fd, url, HEALTH_PORT=str(ports[1]), **common), "worker"
            )
            try:
                await fd.wait_ready(timeout=90)
                await worker.logged("encoder worker started")
                await _post(fd, general, alice, range(10))
                await eventually(lambda: _rows_at_least(engine, 3), within=90)

                await asyncio.to_thread(postgres.stop)
                down = asyncio.create_task(asyncio.sleep(OUTAGE_S))  # the outage's length
                await _post(fd, general, alice, range(10, 20))  # queued in memory meanwhile
                await bot.logged("database unavailable")
                await worker.logged("database unavailable")
                await down
                await asyncio.to_thread(postgres.start)

                await eventually(lambda: _rows_at_least(engine, 20), within=120)
                assert bot.alive and worker.alive
                async with aiohttp.ClientSession() as http:
                    for port in ports:
                        await eventually(lambda port=port: _healthy(http, port), within=60)
                for process in (bot, worker):
                    status, _ = await process.stop()
                    assert status == 0, process.log()
            finally:
                await bot.ensure_gone()
                await worker.ensure_gone()
            assert await _rows_at_least(engine, 20) and not await _rows_at_least(engine, 21)


async def _post(fd: FakeDiscord, channel, member, numbers: range) -> None:
    for i in numbers:
        await fd.post_message(channel, member, "", attachments=[picture("blue", "cross", 500 + i)])


async def _rows_at_least(engine, n: int) -> bool:
    from sqlalchemy import func, select

    from retrieval.database.tables import IndexedImage

    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(IndexedImage))) >= n


async def _healthy(http: aiohttp.ClientSession, port: int) -> bool:
    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
        return response.status == 200


def _png(i: int) -> bytes:
    return picture("blue", "circle", 10 + i).data


def _served(fd: FakeDiscord, links: list[str]) -> int:
    return sum(any(status == 200 for _, status in fd.cdn.requests_for(link)) for link in links)


def _restarts(scrape: str) -> dict[str, int]:
    found = re.findall(r'^clipfind_task_restarts_total\{task="([^"]+)"\} (\S+)$', scrape, re.M)
    return {task: int(float(n)) for task, n in found}


async def _is(value: bool) -> bool:
    return value


async def _rows_are(url: str, expected: int) -> bool:
    """Counted on a connection of the test's own: the bot's pool may still be busy."""
    from sqlalchemy import func, select

    from retrieval.database.tables import IndexedImage

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            found = await conn.scalar(select(func.count()).select_from(IndexedImage))
    finally:
        await engine.dispose()
    return found == expected


async def test_images_edited_out_while_postgres_is_down_leave_the_index_once_it_is_back(
    tmp_path, caplog
):
    """An edit that removes an attachment, one that hides a link preview, and one that adds a
    picture reach the bot while PostgreSQL is stopped: the deletions they call for are waited out
    like a message's deletion, not dropped with a traceback, and once the server is back exactly
    what the messages show is stored."""
    caplog.set_level(logging.WARNING)
    with embedded_server("clipfind-edit-outage-", citus=False) as server:
        url = postgres_url(server, "postgres")
        postgres = Restartable(server)
        async with FakeDiscord() as fd:
            guild = fd.add_guild("Edits")
            general = guild.add_text_channel("general")
            alice = guild.add_member("alice")
            settings = bot_settings(
                fd, tmp_path, database_url=url, backfill=False, database_pool_timeout_s=2.0
            )
            async with running_bot(settings, fd) as bot:
                two = await fd.post_message(
                    general,
                    alice,
                    "",
                    attachments=[picture("red", "circle", 1), picture("blue", "star", 2)],
                )
                link = fd.host_external_image("square.png", _png(3), "image/png")
                preview = await fd.post_message(general, alice, link, embeds=[fd.image_embed(link)])
                await settled(bot, fd)
                assert await bot.store.count(guild_id=guild.id) == 3

                await asyncio.to_thread(postgres.stop)
                try:
                    kept = two.attachments[1]
                    await fd.edit_message(two, attachments=[kept])
                    await fd.suppress_embeds(preview)
                    # A later edit adds a picture: the first edit's deletion, whenever it runs,
                    # must leave it alone.
                    await fd.edit_message(two, attachments=[kept, picture("green", "cross", 4)])
                    added = two.attachments[1]
                    # The same update queues the attachment the message keeps: once that has
                    # failed twice, the bot has long handled both edits, with the server away.
                    await eventually(lambda: _is(caplog.text.count("cannot queue") >= 2))
                finally:
                    await asyncio.to_thread(postgres.start)

                async def only_the_kept_one() -> bool:
                    keys = await bot.store.known_keys(two.id, guild_id=guild.id)
                    gone = not await bot.store.known_keys(preview.id, guild_id=guild.id)
                    return gone and set(keys) == {kept.id, added.id}

                await eventually(only_the_kept_one, within=60)
        assert "Ignoring exception" not in caplog.text
