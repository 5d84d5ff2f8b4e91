"""Fixtures of the end-to-end tests: a running bot against the Discord stand-in."""

from __future__ import annotations

import contextlib

import pytest_asyncio

from tests.conftest import migrated_database


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory):
    """(stand-in, running bot), shared by the tests of one end-to-end module."""
    from tests.helpers import bot_world

    async with bot_world(tmp_path_factory.mktemp("db")) as pair:
        yield pair


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["sqlite", "postgres"])
async def world_on(request, tmp_path_factory):
    """(stand-in, running bot) as `world`, on SQLite and then on a fresh PostgreSQL database:
    the tests of a module that takes it run on both."""
    async with bot_on(request, tmp_path_factory) as pair:
        yield pair


@contextlib.asynccontextmanager
async def bot_on(request, tmp_path_factory, **options):
    """(stand-in, running bot) on the database ``request.param`` names ("sqlite", "postgres"),
    with the settings ``options`` changes."""
    from tests.fakediscord import FakeDiscord
    from tests.helpers import bot_settings, running_bot

    async with contextlib.AsyncExitStack() as stack:
        database = {}
        if request.param == "postgres":
            server = request.getfixturevalue("postgres_server")
            workers = request.getfixturevalue("citus_workers")
            engine = await stack.enter_async_context(migrated_database(server, workers))
            database["database_url"] = engine.url.render_as_string(hide_password=False)
        fd = await stack.enter_async_context(FakeDiscord())
        settings = bot_settings(fd, tmp_path_factory.mktemp("db"), **database, **options)
        yield fd, await stack.enter_async_context(running_bot(settings, fd))
