"""End to end: `/clipfind status` shows a server's members that server's figures only; members
with Manage Server also see the channels the bot cannot read, and the bot's owner the whole
bot's figures. The same channels are named in a log line at start."""

from __future__ import annotations

import asyncio
import logging
import re
import socket

import pytest

from tests.fakediscord import Attachment, FakeDiscord, Overwrite, P
from tests.helpers import backfilled, bot_settings, eventually, picture, running_bot, settled
from tests.tinyclip.shapes import draw, png_bytes

pytestmark = pytest.mark.asyncio(loop_scope="module")

MANAGE_SERVER = int(P.MANAGE_GUILD)
# Lines only the owner sees: what the whole process does, across servers.
PROCESS_WIDE = (
    "Whole bot",
    "This process",
    "Health of this process",
    "Searches",
    "all servers",
    "in hand",
    "cluster",
)


async def status(fd, guild, channel, member) -> str:
    interaction = await fd.invoke_slash(guild, channel, member, "clipfind status")
    reply = await interaction.wait_reply(timeout=30)
    assert reply["flags"] & 64, "status is only for the member who asked"
    return reply["content"]


def line(text: str, label: str) -> str:
    """The status line starting with ``**label``."""
    (found,) = [row for row in text.splitlines() if row.startswith(f"**{label}")]
    return found


def unreadable_world(guild):
    """#art hides itself from the bot; #old hides its history from it."""
    general = guild.add_text_channel("general")
    art = guild.add_text_channel("art", overwrites=[Overwrite(guild.bot_role, deny=P.VIEW_CHANNEL)])
    old = guild.add_text_channel(
        "old", overwrites=[Overwrite(guild.bot_role, deny=P.READ_MESSAGE_HISTORY)]
    )
    return general, art, old


async def test_members_see_their_own_server_only_and_the_owner_sees_the_whole_bot(world):
    fd, bot = world
    home, away = fd.add_guild("Status home"), fd.add_guild("Status away")
    home_general = home.add_text_channel("general")
    away_general, away_art = away.add_text_channel("general"), away.add_text_channel("art")
    alice, bob = home.add_member("alice"), away.add_member("bob")
    owner = home.add_existing_user(fd.owner_user)
    await fd.wait_ready()
    await fd.post_message(home_general, alice, "", attachments=[picture("red", "circle", 1)])
    await fd.post_message(away_general, bob, "", attachments=[picture("blue", "star", 2)])
    await fd.post_message(away_art, bob, "", attachments=[picture("green", "cross", 3)])
    broken = Attachment("broken.png", b"no picture here", "image/png")
    await fd.post_message(away_general, bob, "", attachments=[broken])
    await settled(bot, fd)
    await backfilled(bot)
    # One image of the away server stays on its way while the members ask.
    url = fd.host_external_image("slow.png", png_bytes(draw("red", "square", rng=4)), "image/png")
    download = fd.set_cdn_fault(url, delay=3.0)
    await fd.post_message(away_general, bob, url, embeds=[fd.image_embed(url)])

    async def downloading() -> bool:
        return download.served > 0

    await eventually(downloading)

    mine = await status(fd, home, home_general, alice)
    assert line(mine, "Images indexed in this server") == "**Images indexed in this server:** 1"
    assert line(mine, "Waiting to be indexed here") == "**Waiting to be indexed here:** 0"
    assert "Could not be indexed" not in mine
    assert re.search(r"\*\*History backfill here:\*\* 1/1 channels", mine)
    assert not [word for word in PROCESS_WIDE if word in mine]

    theirs = await status(fd, away, away_general, bob)
    assert line(theirs, "Images indexed in this server") == "**Images indexed in this server:** 2"
    assert line(theirs, "Waiting to be indexed here") == "**Waiting to be indexed here:** 1"
    # Backfill may read the broken file's message too: it is not tried (or counted) again.
    skipped = line(theirs, "Could not be indexed here")
    assert skipped == "**Could not be indexed here:** not_an_image 1"
    assert re.search(r"\*\*History backfill here:\*\* 2/2 channels", theirs)
    assert not [word for word in PROCESS_WIDE if word in theirs]

    # The owner asks in the home server: its figures, then the whole bot's.
    owners = await status(fd, home, home_general, owner)
    assert line(owners, "Waiting to be indexed here") == "**Waiting to be indexed here:** 0"
    assert f"{len(bot.guilds)} servers" in line(owners, "Whole bot")
    assert "not_an_image" in line(owners, "Could not be indexed, all servers")
    assert "1 downloading" in line(owners, "This process since start")
    assert line(owners, "Waiting to be indexed, all servers").endswith(":** 1")
    assert line(owners, "History backfill, all servers")
    # Every process on the database: here the queue holds the slow image, and this bot is the
    # one process that encodes.
    queue = line(owners, "Queue, whole cluster")
    assert re.fullmatch(
        r"\*\*Queue, whole cluster:\*\* 1 waiting \(oldest \d+ s\), 0 waiting for a retry, "
        r"\d+ being worked on",
        queue,
    ), queue
    encoding = line(owners, "Encoding, whole cluster")
    assert re.match(
        rf"\*\*Encoding, whole cluster:\*\* \d+\.\d images/s from 1 process "
        rf"\(bot on {re.escape(socket.gethostname())}: \d+\.\d/s, \d+ stored, \d+ in hand\)$",
        encoding,
    ), encoding
    await settled(bot, fd)


async def test_managers_see_the_channels_the_bot_cannot_read(world):
    fd, bot = world
    guild = fd.add_guild("Status sight")
    general, art, old = unreadable_world(guild)
    guild.add_text_channel("left-out")
    mods = guild.add_role("mods", permissions=MANAGE_SERVER)
    mod, carol = guild.add_member("mod", roles=[mods]), guild.add_member("carol")
    await fd.wait_ready()
    left_out = next(c for c in guild.channels.values() if c.name == "left-out")
    await fd.invoke_slash(guild, general, mod, "clipfind channels exclude", {"channel": left_out})

    seen = line(await status(fd, guild, general, mod), "Channels I cannot index")
    assert f"{art.mention} (no View Channel)" in seen
    assert f"{old.mention} (no Read Message History)" in seen
    assert "(2;" in seen
    # Readable channels, and one excluded on purpose, are not the bot's blind spots.
    assert general.mention not in seen and left_out.mention not in seen
    assert "cannot index" not in await status(fd, guild, general, carol)


# Tests that start a bot of their own come last: starting one points discord.py (a global
# setting) at its own stand-in, away from the module's shared world.
async def test_the_owner_sees_whether_this_process_is_healthy(world):
    fd, bot = world
    guild = fd.add_guild("Status health")
    general = guild.add_text_channel("general")
    owner = guild.add_existing_user(fd.owner_user)
    await fd.wait_ready()
    healthy = await status(fd, guild, general, owner)
    assert line(healthy, "Health") == "**Health of this process:** healthy"

    async def broken() -> None:  # a task of the process that fails each time it starts
        raise RuntimeError("a bug in a background task")

    task = bot.supervisor.start("broken-task", broken)
    try:
        await eventually(lambda: _holds(bot.supervisor.problem() is not None))
        sick = line(await status(fd, guild, general, owner), "Health")
        assert sick.startswith("**Health of this process:** unhealthy: task broken-task keeps")
        assert sick.endswith("RuntimeError: a bug in a background task")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert bot.supervisor.problem() is None  # a task stopped is no longer the process's


async def _holds(value: bool) -> bool:
    return value


async def test_the_channels_the_bot_cannot_read_are_logged_at_start(tmp_path, caplog):
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Logged sight")
        general, art, old = unreadable_world(guild)
        with caplog.at_level(logging.INFO, logger="bot.cogs.admin"):
            async with running_bot(bot_settings(fd, tmp_path), fd):

                def logged() -> list[str]:
                    return [r.getMessage() for r in caplog.records if "cannot index" in r.message]

                async def reported() -> bool:
                    return bool(logged())

                await eventually(reported)
    (message,) = logged()
    assert f"Logged sight ({guild.id})" in message
    assert f"#art ({art.id}): no View Channel" in message
    assert f"#old ({old.id}): no Read Message History" in message
    assert str(general.id) not in message
