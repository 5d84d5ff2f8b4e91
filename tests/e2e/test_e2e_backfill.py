"""End to end: what happened while the bot was not running: history is read and indexed, and
what was deleted meanwhile is never linked."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

from bot.backfill import PAGE, PAGES_PER_TURN
from retrieval.database.engine import create_engine, ensure_schema
from retrieval.indexing.cursors import BackfillCursors
from retrieval.policy.index_policy import IndexPolicy
from tests.fakediscord import DEFAULT_BOT, Attachment, FakeDiscord, Overwrite, P
from tests.helpers import (
    backfilled,
    bot_settings,
    count_is,
    eventually,
    find,
    picture,
    result_ids,
    running_bot,
    settled,
)
from tests.tinyclip.shapes import draw, png_bytes

JUMP = re.compile(r"https://discord\.com/channels/(\d+)/(\d+)/(\d+)")
LONG_AGO = datetime.now(UTC) - timedelta(days=400)


def history_reads(fd: FakeDiscord, channel, since: int = 0) -> list[dict[str, str]]:
    """The query of every history page the bot asked for in one channel."""
    path = f"/channels/{channel.id}/messages"
    return [r.query for r in fd.requests[since:] if r.method == "GET" and r.path == path]


def history(fd, channel, author, count: int, *, every: int, start: datetime = LONG_AGO):
    """``count`` backdated messages, oldest first, with a picture on every ``every``-th."""
    messages = []
    for i in range(count):
        files = [picture("red", "circle", i)] if i % every == 0 else []
        at = start + timedelta(minutes=i)
        messages.append(fd.add_history_message(channel, author, f"m{i}", attachments=files, at=at))
    return messages


async def test_history_in_channels_and_threads_is_indexed_and_found(tmp_path):
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Old times")
        memes, photos = guild.add_text_channel("memes"), guild.add_text_channel("photos")
        alice, bob = guild.add_member("alice"), guild.add_member("bob")
        circle = fd.add_history_message(
            memes, alice, "old", attachments=[picture("red", "circle", 1)], at=LONG_AGO
        )
        fd.add_history_message(
            photos, bob, "", attachments=[picture("blue", "square", 2, jpeg=True)]
        )
        linked = fd.host_external_image(
            "tri.png", png_bytes(draw("purple", "triangle", size=160, rng=5)), "image/png"
        )
        triangle = fd.add_history_message(photos, alice, linked, embeds=[fd.image_embed(linked)])
        active = guild.add_thread(memes, "cats")
        fd.add_history_message(active, bob, "", attachments=[picture("green", "star", 3)])
        archived = guild.add_thread(photos, "old thread", archived=True)
        fd.add_history_message(archived, alice, "", attachments=[picture("yellow", "cross", 4)])
        private = guild.add_thread(
            memes, "secret", private=True, members=[alice, guild.bot_member], archived=True
        )
        fd.add_history_message(private, alice, "", attachments=[picture("orange", "star", 6)])
        # The bot neither joined this one nor has Manage Threads here: not for its eyes.
        closed = guild.add_thread(photos, "closed", private=True, members=[bob], archived=True)
        fd.add_history_message(closed, bob, "", attachments=[picture("blue", "circle", 7)])
        mods = fd.add_guild("Mods", bot_permissions=DEFAULT_BOT | P.MANAGE_THREADS)
        carol = mods.add_member("carol")
        staff = mods.add_thread(mods.add_text_channel("staff"), "x", private=True, archived=True,
                                members=[carol])  # fmt: skip
        fd.add_history_message(staff, carol, "", attachments=[picture("green", "circle", 8)])

        async with running_bot(bot_settings(fd, tmp_path), fd) as bot:
            await backfilled(bot)
            assert await bot.store.count(guild_id=guild.id) == 6
            assert not history_reads(fd, closed)
            assert await bot.store.count(guild_id=mods.id) == 1
            progress = bot.backfill_progress
            assert (progress.channels_done, progress.channels_total) == (7, 7)
            assert progress.images_submitted == 7 and not progress.running

            reply = await find(fd, guild, memes, bob, "a red circle", count=1)
            assert JUMP.search(reply["embeds"][0]["description"]).group(3) == str(circle.id)
            reply = await find(fd, guild, memes, bob, "a purple triangle", count=1)
            assert JUMP.search(reply["embeds"][0]["description"]).group(3) == str(triangle.id)


async def test_long_history_is_read_completely_and_offline_posts_are_caught_up(tmp_path):
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Chatty")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        messages = history(fd, general, alice, 250, every=25)
        settings = bot_settings(fd, tmp_path)

        async with running_bot(settings, fd) as bot:
            await backfilled(bot)
            assert await bot.store.count(guild_id=guild.id) == 10
        reads = history_reads(fd, general)
        assert [q.get("before") for q in reads] == [
            None, str(messages[150].id), str(messages[50].id)
        ]  # fmt: skip

        # Posted while the bot was offline: only what is newer than the cursor is read.
        since = len(fd.requests)
        for seed in (7, 8):
            fd.add_history_message(general, alice, "", attachments=[picture("blue", "cross", seed)])
        async with running_bot(settings, fd) as bot:
            await backfilled(bot)
            assert await bot.store.count(guild_id=guild.id) == 12
        assert history_reads(fd, general, since) == [
            {"limit": "100", "after": str(messages[-1].id)}
        ]  # fmt: skip


async def test_restart_mid_backfill_resumes_from_the_cursor_and_loses_nothing(tmp_path):
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Big")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        count = PAGE * (PAGES_PER_TURN + 1) + 50
        messages = history(fd, general, alice, count, every=50)
        # The newest picture never finishes downloading while the first bot runs; pages come
        # slowly enough to stop the bot after its first turn.
        newest_picture = [m for m in messages if m.attachments][-1]
        fault = fd.set_cdn_fault(newest_picture.attachments[0].url, stall=True)
        fd.slow_down("GET", rf"/channels/{general.id}/messages", 0.2)
        images = len(range(0, count, 50))
        settings = bot_settings(fd, tmp_path)

        async with running_bot(settings, fd) as bot:
            await eventually(lambda: _cursor_saved(settings, general.id))
            assert fault.served
        cursor = await _cursor(settings, general.id)
        # Saved after the first turn: its pictures were queued first, the stuck one included.
        assert not cursor.complete
        assert cursor.oldest_id == messages[count - PAGE * PAGES_PER_TURN].id
        assert cursor.newest_id == messages[-1].id

        fd.cdn.faults.clear()
        since = len(fd.requests)
        async with running_bot(settings, fd) as bot:
            await backfilled(bot)
            assert await bot.store.count(guild_id=guild.id) == images
        reads = history_reads(fd, general, since)
        assert all("before" in q or "after" in q for q in reads), "re-read the newest page"
        befores = [int(q["before"]) for q in reads if "before" in q]
        assert befores[0] == cursor.oldest_id and max(befores) == cursor.oldest_id


async def _cursor(settings, channel_id: int):
    engine = create_engine(settings.database_url)
    try:
        return await BackfillCursors(engine).get(channel_id)
    finally:
        await engine.dispose()


async def _cursor_saved(settings, channel_id: int) -> bool:
    return await _cursor(settings, channel_id) is not None


async def _served(fault) -> bool:
    return fault.served > 0


async def test_opted_out_excluded_hidden_and_bot_messages_are_not_backfilled(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Private")
        alice, olly = guild.add_member("alice"), guild.add_member("olly")
        robot = guild.add_member("robot", bot=True)
        general, excluded = guild.add_text_channel("general"), guild.add_text_channel("excluded")
        hidden = guild.add_text_channel(
            "hidden", overwrites=[Overwrite(guild.bot_role, deny=P.VIEW_CHANNEL)]
        )
        no_history = guild.add_text_channel(
            "no-history", overwrites=[Overwrite(guild.bot_role, deny=P.READ_MESSAGE_HISTORY)]
        )
        excluded_thread = guild.add_thread(excluded, "side")
        for seed, (channel, author) in enumerate(
            [(general, alice), (general, olly), (general, robot), (excluded, alice),
             (excluded_thread, alice), (hidden, alice), (no_history, alice)]
        ):  # fmt: skip
            fd.add_history_message(channel, author, "", attachments=[picture("red", "star", seed)])
        settings = bot_settings(fd, tmp_path)
        engine = create_engine(settings.database_url)
        try:
            await ensure_schema(engine)
            policy = IndexPolicy(engine)
            await policy.opt_out(olly.id)
            await policy.exclude_channel(guild_id=guild.id, channel_id=excluded.id, by=alice.id)
        finally:
            await engine.dispose()

        async with running_bot(settings, fd) as bot:
            await backfilled(bot)
            assert await bot.store.count(guild_id=guild.id) == 1
            assert bot.backfill_progress.channels_total == 1
            for channel in (excluded, excluded_thread, hidden, no_history):
                assert not history_reads(fd, channel), f"read #{channel.name}"
            ours = [r for r in caplog.records if r.name.startswith(("bot.", "retrieval."))]
            assert all(r.levelno < logging.WARNING for r in ours), "skipped without a fuss"

            # Once the bot may read a channel, its history is read.
            await fd.update_channel_overwrites(hidden, [])
            await count_is(bot, guild.id, 2)
            await backfilled(bot)
            assert bot.backfill_progress.channels_total == 2


async def test_channels_deleted_or_hidden_mid_walk_end_cleanly(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Shifting")
        doomed, closing = guild.add_text_channel("doomed"), guild.add_text_channel("closing")
        alice = guild.add_member("alice")
        holds = []
        for channel in (doomed, closing):
            # More than one turn; the second waits until the channels have changed.
            history(fd, channel, alice, PAGE * PAGES_PER_TURN + 10, every=PAGE)
            path = rf"/channels/{channel.id}/messages"
            holds.append(fd.hold("GET", path, after=PAGES_PER_TURN))
        settings = bot_settings(fd, tmp_path)

        async with running_bot(settings, fd) as bot:
            for channel in (doomed, closing):
                await eventually(lambda c=channel: _cursor_saved(settings, c.id))
            # Changed behind the bot's back: it only learns from Discord's answers.
            await fd.delete_channel(doomed, dispatch=False)
            await fd.update_channel_overwrites(
                closing, [Overwrite(guild.bot_role, deny=P.VIEW_CHANNEL)], dispatch=False
            )
            for hold in holds:
                hold.release()
            await backfilled(bot)
            assert bot.backfill_progress.channels_done == 2
            cursors = bot.backfill.cursors
            assert await cursors.get(doomed.id) is None, "a deleted channel's cursor is dropped"
            kept = await cursors.get(closing.id)
            assert kept is not None and not kept.complete, "resumes if it becomes readable"
        ours = [r for r in caplog.records if r.name == "bot.backfill"]
        assert all(r.levelno < logging.WARNING for r in ours)
        assert any("#doomed" in r.getMessage() and "deleted" in r.getMessage() for r in ours)
        assert any("#closing" in r.getMessage() and "no longer" in r.getMessage() for r in ours)


async def test_an_earliest_repost_deleted_while_offline_is_not_linked(tmp_path):
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Reposts gone")
        memes = guild.add_text_channel("memes")
        ida = guild.add_member("ida")
        picture_bytes = png_bytes(draw("yellow", "circle", size=160, rng=88))
        same = Attachment("moon.png", picture_bytes, "image/png")
        settings = bot_settings(fd, tmp_path)
        async with running_bot(settings, fd) as bot:
            posts = [await fd.post_message(memes, ida, "", attachments=[same]) for _ in range(3)]
            await settled(bot, fd)
        await fd.delete_message(posts[0], dispatch=False)  # while the bot was down

        async with running_bot(settings, fd) as bot:
            reply = await find(fd, guild, memes, ida, "a yellow circle", count=1)
            top = reply["embeds"][0]["description"]
            links = {int(m.group(3)) for m in JUMP.finditer(top)}
            # The live first copy is linked as the earliest, or shown and marked so.
            assert posts[1].id in links and posts[0].id not in links and "earliest" in top
            assert await bot.store.known_keys(posts[0].id) == set()  # its vector went too


async def test_channels_and_threads_deleted_while_offline_leave_no_vectors(tmp_path):
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Tidy")
        doomed, kept = guild.add_text_channel("doomed"), guild.add_text_channel("kept")
        old_thread = guild.add_thread(kept, "old", archived=True)
        live_thread = guild.add_thread(kept, "still here", archived=True)
        orphan = guild.add_thread(doomed, "goes with its channel", archived=True)
        jo = guild.add_member("jo")
        for seed, where in enumerate([doomed, kept, old_thread, live_thread, orphan]):
            fd.add_history_message(where, jo, "", attachments=[picture("red", "square", seed)])
        settings = bot_settings(fd, tmp_path)
        async with running_bot(settings, fd) as bot:
            await backfilled(bot)
            assert await bot.store.count(guild_id=guild.id) == 5
        await fd.delete_channel(doomed, dispatch=False)
        await fd.delete_thread(old_thread, dispatch=False)

        since = len(fd.requests)
        async with running_bot(settings, fd) as bot:
            gone = {doomed.id, old_thread.id, orphan.id}

            async def swept() -> bool:
                return await bot.store.channel_ids(guild_id=guild.id) == {
                    kept.id,
                    live_thread.id,
                }

            await eventually(swept)
            assert (
                not {c.channel_id for c in await BackfillCursors(bot.engine).in_guild(guild.id)}
                & gone
            )
        asked = {r.path for r in fd.requests[since:] if r.method == "GET"}
        assert f"/channels/{old_thread.id}" in asked  # unknown ids are asked about ...
        assert f"/channels/{live_thread.id}" not in asked  # ... not those backfill listed


async def test_the_text_chat_of_voice_and_stage_channels_is_backfilled(tmp_path):
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Voices")
        general = guild.add_text_channel("general")
        lounge = guild.add_voice_channel("lounge")
        town_hall = guild.add_voice_channel("town hall", stage=True)
        alice = guild.add_member("alice")
        in_voice = fd.add_history_message(
            lounge, alice, "", attachments=[picture("red", "circle", 1)], at=LONG_AGO
        )
        on_stage = fd.add_history_message(
            town_hall, alice, "", attachments=[picture("blue", "square", 2)]
        )

        async with running_bot(bot_settings(fd, tmp_path), fd) as bot:
            await backfilled(bot)
            assert history_reads(fd, lounge) and history_reads(fd, town_hall)
            assert await bot.store.count(guild_id=guild.id) == 2
            for message, query in ((in_voice, "a red circle"), (on_stage, "a blue square")):
                reply = await find(fd, guild, general, alice, query, count=1)
                assert result_ids(reply) == [message.id]
