"""`python -m bot` stopped by SIGTERM at any moment, as Docker, systemd or Kubernetes stop it:
while the model loads or the schema is created it exits 0 at once without starting, and in the
middle of a burst of images it exits 0 within SHUTDOWN_DEADLINE_S, even with its database no
longer answering."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg
import pytest

from retrieval.database.engine import check_schema, create_engine
from tests.conftest import postgres_url
from tests.fakediscord import FakeDiscord
from tests.helpers import eventually, picture
from tests.processes import Process, clipfind_env

DEADLINE_S = 4.0
# What the test's own measuring adds (signal delivery, reaping the process) on a busy machine.
SLACK_S = 1.0
# The deadline while the database is silent (every stop then lasts that long).
SILENT_DEADLINE_S = 8.0
ABANDONED = "still stopping"  # what the process logs when the deadline, not its steps, ended it


@pytest.fixture(params=["sqlite", "postgres"])
async def empty_database(request, tmp_path):
    """The URL of a database with no schema yet: the first start creates it."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/clipfind.db"
        return
    server = request.getfixturevalue("postgres_server")
    name = f"test_{uuid.uuid4().hex}"
    host = str(server.get_postmaster_info().socket_dir)
    admin = await asyncpg.connect(user="postgres", database="postgres", host=host)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield postgres_url(server, name)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def bot_env(fd: FakeDiscord, database_url: str, **settings: str) -> dict[str, str]:
    return clipfind_env(
        fd,
        database_url,
        BACKFILL="false",
        SHUTDOWN_DEADLINE_S=str(DEADLINE_S),
        **settings,
    )


async def stopped_before_start(fd: FakeDiscord, env: dict, workdir, *, once: str) -> str:
    """Start `python -m bot`, send SIGTERM once its log says ``once``: it must exit 0 before
    its deadline without having started. Returns its log."""
    bot = await Process.start(workdir, env)
    try:
        await bot.logged(once)
        status, took = await bot.stop()
    finally:
        await bot.ensure_gone()
    log = bot.log()
    assert status == 0, log
    assert took < DEADLINE_S + SLACK_S, log
    assert "stopped before starting" in log
    assert ABANDONED not in log
    assert not fd.identifies, "it never connected to the gateway"
    return log


async def test_a_stop_while_the_model_loads_exits_0_without_starting(database_url, tmp_path):
    async with FakeDiscord() as fd:
        fd.add_guild("Never joined")
        # A full-size model built from scratch: seconds of loading to be stopped in.
        env = bot_env(fd, database_url, CLIP_MODEL="ViT-B-32", CLIP_PRETRAINED="")
        log = await stopped_before_start(fd, env, tmp_path, once="loading the CLIP model")
    assert "loaded CLIP model" not in log  # stopped during the load, not after it


async def test_a_stop_while_the_schema_is_created_exits_0_with_the_schema_whole(
    empty_database, tmp_path
):
    async with FakeDiscord() as fd:
        env = bot_env(fd, empty_database)
        log = await stopped_before_start(fd, env, tmp_path, once="Running upgrade")
    assert "loading the CLIP model" not in log
    # The schema was finished, not left half-made: the next start runs on it as it is.
    engine = create_engine(empty_database)
    try:
        assert await check_schema(engine) is not None
    finally:
        await engine.dispose()


class Blackhole:
    """A TCP front for PostgreSQL's unix socket that can stop answering, as a database host
    behind a dead network does: bytes sent are never answered, new connections never greeted."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.port = 0
        self.silent = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Blackhole:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._links:
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)
        for writer in self._writers:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self.silent.is_set():
            return  # accepted, never answered
        up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path)
        self._writers.append(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._links.add(task)
            task.add_done_callback(self._links.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(1 << 16):
                if self.silent.is_set():
                    await asyncio.Event().wait()  # swallowed: no answer ever comes
                sink.write(data)
                await sink.drain()


@pytest.fixture(params=["sqlite", "postgres-unreachable"])
def burst_database(request, tmp_path) -> tuple[str, str | None]:
    """(SQLite's URL, None), or (a PostgreSQL database's name, its server's unix socket)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/clipfind.db", None
    engine = request.getfixturevalue("postgres_engine")
    info = request.getfixturevalue("postgres_server").get_postmaster_info()
    return engine.url.database, f"{info.socket_dir}/.s.PGSQL.{info.port}"


async def test_a_stop_mid_burst_exits_0_within_the_deadline(burst_database, tmp_path):
    async with contextlib.AsyncExitStack() as stack:
        url, socket_path = burst_database
        hole = None
        if socket_path is not None:
            hole = await stack.enter_async_context(Blackhole(socket_path))
            url = f"postgresql+asyncpg://postgres@127.0.0.1:{hole.port}/{url}"
        fd = await stack.enter_async_context(FakeDiscord())
        guild = fd.add_guild("Busy")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        # With the database silent, the stop keeps the last part of its deadline for handing
        # the jobs back; a longer deadline there, so that a starved machine (the signal handled
        # late, the steps before it slow) still gets that far.
        deadline_s = DEADLINE_S if hole is None else SILENT_DEADLINE_S
        env = bot_env(fd, url) | {"SHUTDOWN_DEADLINE_S": str(deadline_s)}
        bot = await Process.start(tmp_path, env)
        stack.push_async_callback(bot.ensure_gone)
        await fd.wait_ready(timeout=90)
        for i in range(12):  # downloads that hang keep work in hand when the stop comes
            data = picture("green", "square", 300 + i).data
            link = fd.host_external_image(f"b{i}.png", data, "image/png")
            fd.set_cdn_fault(link, stall=i % 2 == 0)
            await fd.post_message(general, alice, link, embeds=[fd.image_embed(link)])
        await eventually(lambda: _downloads(fd, 6), within=60)
        if hole is not None:
            hole.silent.set()
        status, took = await bot.stop()
        fd.cdn.closing.set()
        log = bot.log()
        # Within the deadline whatever happens: on SQLite a cancelled statement can still sit in
        # SQLite's busy wait (no cancelling that), and then the deadline ends the stop.
        assert status == 0, log
        assert took < deadline_s + SLACK_S, log
        if hole is not None:
            # Each wait on the silent database was short (not a connect timeout each): the stop
            # got as far as handing the jobs back before its deadline.
            assert "could not hand back" in log, log


async def _downloads(fd: FakeDiscord, at_least: int) -> bool:
    return len(fd.cdn.hits) >= at_least
