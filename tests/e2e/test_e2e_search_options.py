"""End to end: `/find`'s options, paging buttons, reposts, query handling and the text cache."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
import pytest_asyncio

from bot.cogs.search import EMPTY_QUERY, NO_MATCH_FILTERED
from bot.views import NOT_YOURS, ResultsView
from tests.fakediscord import Attachment, FakeDiscord
from tests.helpers import (
    JUMP,
    bot_settings,
    bot_world,
    buttons,
    eventually,
    find,
    picture,
    result_ids,
    running_bot,
    settled,
)
from tests.tinyclip.shapes import COLOURS, SHAPES, draw, jpeg_bytes, png_bytes

pytestmark = pytest.mark.asyncio(loop_scope="module")

DAY = 86400.0


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory):
    # The stand-in's clock starts two months back, so tests can post "weeks ago" by moving it
    # forward (snowflakes, and so message dates, only move forward).
    db_dir = tmp_path_factory.mktemp("db")
    async with bot_world(db_dir, clock=lambda: time.time() - 60 * DAY) as pair:
        yield pair


def days_ago(fd, days: float) -> None:
    """Move the stand-in's clock to ``days`` before the real now."""
    step = time.time() - days * DAY - fd.clock()
    assert step >= 0, "the clock only moves forward"
    fd.advance_clock(step)


async def test_every_command_and_option_is_described(world):
    fd, _ = world
    commands = {(c["name"], c.get("type", 1)): c for c in fd.synced_commands[None]}
    find_command = commands[("find", 1)]
    options = {o["name"]: o for o in find_command["options"]}
    assert list(options) == [
        "query", "channel", "author", "after", "before", "sort", "count", "image", "public",
    ]  # fmt: skip
    assert all(0 < len(o["description"]) <= 100 for o in options.values())
    assert [c["value"] for c in options["sort"]["choices"]] == ["relevance", "newest", "oldest"]
    assert options["image"]["type"] == 11 and options["channel"]["type"] == 7
    assert ("Find similar images", 3) in commands


async def test_channel_author_and_dates_filter_inside_the_search(world):
    fd, bot = world
    guild = fd.add_guild("Filters")
    art, chat = guild.add_text_channel("art"), guild.add_text_channel("chat")
    alice, bob, carol = (guild.add_member(n) for n in ("alice", "bob", "carol"))
    await fd.wait_ready()
    thread = guild.add_thread(art, "sketches", members=[alice])
    await fd.flush()
    # Indexed before the clock moves on: moving it expires the signed attachment links.
    days_ago(fd, 30)
    old = await fd.post_message(art, alice, "", attachments=[picture("red", "circle", 31)])
    await settled(bot, fd)
    days_ago(fd, 10)
    middle = await fd.post_message(chat, bob, "", attachments=[picture("red", "circle", 32)])
    await settled(bot, fd)
    days_ago(fd, 1)
    recent = await fd.post_message(thread, alice, "", attachments=[picture("red", "circle", 33)])
    noise = [
        await fd.post_message(chat, carol, "", attachments=[picture("red", "circle", 40 + i)])
        for i in range(3)
    ]
    await settled(bot, fd)
    days_ago(fd, 0)

    async def ids(**options) -> set[int]:
        return set(
            result_ids(await find(fd, guild, chat, bob, "a red circle", count=10, **options))
        )

    everyone = {old.id, middle.id, recent.id, *(m.id for m in noise)}
    assert await ids() == everyone
    assert await ids(channel=art) == {old.id, recent.id}  # a channel includes its threads
    assert await ids(channel=thread) == {recent.id}
    assert await ids(author=bob) == {middle.id}
    assert await ids(after="14d") == everyone - {old.id}
    assert await ids(before="2w") == {old.id}
    assert await ids(after="14d", author=alice) == {recent.id}
    middle_day = datetime.fromtimestamp(time.time() - 10 * DAY, UTC).date().isoformat()
    assert await ids(after=middle_day, before="2d") == {middle.id}

    reply = await find(fd, guild, chat, bob, "a red circle", author=carol, before="20d")
    assert reply["content"] == NO_MATCH_FILTERED
    reply = await find(fd, guild, chat, bob, "a red circle", after="next tuesday")
    assert "can't read `next tuesday` as a date" in reply["content"] and "7d" in reply["content"]
    # A count of years that leaves the calendar reads as a date that cannot be read.
    reply = await find(fd, guild, chat, bob, "a red circle", after="2999y")
    assert "can't read `2999y` as a date" in reply["content"] and not reply["embeds"]
    reply = await find(fd, guild, chat, bob, "a red circle", after="2d", before="14d")
    assert "earlier" in reply["content"] and not reply["embeds"]


async def test_sorting_by_date_keeps_to_the_good_matches(world):
    fd, bot = world
    guild = fd.add_guild("Sorting")
    general = guild.add_text_channel("general")
    dan = guild.add_member("dan")
    await fd.wait_ready()
    circles = []
    for seed in range(3):
        fd.advance_clock(DAY)
        circles.append(
            await fd.post_message(general, dan, "", attachments=[picture("blue", "circle", seed)])
        )
        await settled(bot, fd)
    fd.advance_clock(DAY)
    square = await fd.post_message(general, dan, "", attachments=[picture("yellow", "square", 9)])
    await settled(bot, fd)

    relevance = result_ids(await find(fd, guild, general, dan, "a blue circle", count=10))
    assert set(relevance[:3]) == {m.id for m in circles} and relevance[3] == square.id
    newest = await find(fd, guild, general, dan, "a blue circle", count=10, sort="newest")
    assert result_ids(newest) == [m.id for m in reversed(circles)]  # not the newer square
    assert "Newest first" in newest["content"]
    oldest = await find(fd, guild, general, dan, "a blue circle", count=10, sort="oldest")
    assert result_ids(oldest) == [m.id for m in circles]


async def test_paging_walks_every_result_once_for_the_searcher_only(world):
    fd, bot = world
    guild = fd.add_guild("Pages")
    general = guild.add_text_channel("general")
    erin, frank = guild.add_member("erin"), guild.add_member("frank")
    await fd.wait_ready()
    classes = [(c, s) for c in COLOURS for s in SHAPES][:12]
    posted = {
        (await fd.post_message(general, erin, "", attachments=[picture(c, s, i)])).id
        for i, (c, s) in enumerate(classes)
    }
    await settled(bot, fd)

    reply = await find(fd, guild, general, erin, "a red circle", count=5, public=True)
    assert buttons(reply) == {"find:previous": False, "find:next": True}
    assert "1–5 of 12" in reply["content"]
    seen = result_ids(reply)

    # Another member sees the public answer but cannot turn its pages.
    refused = await (await fd.click(reply, "find:next", frank)).wait_reply()
    assert refused["content"] == NOT_YOURS and refused["flags"] & 64

    while buttons(reply)["find:next"]:
        reply = await (await fd.click(reply, "find:next", erin)).wait_reply()
        seen += result_ids(reply)
    assert len(seen) == len(set(seen)) == 12 and set(seen) == posted
    assert "11–12 of 12" in reply["content"] and buttons(reply)["find:previous"]
    reply = await (await fd.click(reply, "find:previous", erin)).wait_reply()
    assert result_ids(reply) == seen[5:10]

    private = await find(fd, guild, general, erin, "a red circle", count=5)
    with pytest.raises(PermissionError):  # Discord never shows another member an ephemeral answer
        await fd.click(private, "find:next", frank)


async def test_reposts_show_once_with_a_link_to_the_earliest(world):
    fd, bot = world
    guild = fd.add_guild("Reposts")
    memes, photos = guild.add_text_channel("memes"), guild.add_text_channel("photos")
    gina, hal = guild.add_member("gina"), guild.add_member("hal")
    await fd.wait_ready()
    drawing = draw("purple", "star", size=160, rng=77)
    same = Attachment("star.png", png_bytes(drawing), "image/png")
    first = await fd.post_message(memes, gina, "", attachments=[same])
    again = [
        await fd.post_message(photos, hal, "", attachments=[same]),
        await fd.post_message(memes, hal, "", attachments=[same]),
        await fd.post_message(
            photos, gina, "", attachments=[Attachment("star.jpg", jpeg_bytes(drawing, 95))]
        ),
    ]
    other = await fd.post_message(memes, gina, "", attachments=[picture("green", "cross", 5)])
    await settled(bot, fd)
    assert await bot.store.count(guild_id=guild.id) == 5

    reply = await find(fd, guild, memes, hal, "a purple star", count=5)
    copies = {first.id, *(m.id for m in again)}
    shown = result_ids(reply)
    assert len(copies & set(shown)) == 1 and other.id in shown
    top = reply["embeds"][0]["description"]
    assert "+3 reposts" in top
    links = [int(m.group(3)) for m in JUMP.finditer(top)]
    assert links[0] == first.id or links[-1] == first.id  # shown, or linked as the earliest


async def test_query_text_is_checked_cut_to_the_model_and_cached(world):
    fd, bot = world
    guild = fd.add_guild("Words")
    general = guild.add_text_channel("general")
    ivy = guild.add_member("ivy")
    await fd.wait_ready()
    circle = await fd.post_message(general, ivy, "", attachments=[picture("orange", "circle", 3)])
    await settled(bot, fd)

    assert (await find(fd, guild, general, ivy, "   "))["content"] == EMPTY_QUERY

    long = "an orange circle" + " a" * 140  # 300 characters, 145 tokens
    reply = await find(fd, guild, general, ivy, long)
    assert "longer than the model reads (77 tokens)" in reply["content"]
    assert result_ids(reply) == [circle.id]

    counters = bot.encoder.counters
    queries, hits = counters.text_queries, counters.text_cache_hits
    await find(fd, guild, general, ivy, "an orange circle, once")
    await find(fd, guild, general, ivy, "an orange circle, once")
    assert counters.text_queries == queries + 2 and counters.text_cache_hits == hits + 1


async def test_buttons_are_disabled_when_they_expire(tmp_path, caplog, monkeypatch):
    views = recorded_views(monkeypatch)
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path, find_page_timeout_s=1.0)
        guild = fd.add_guild("Expiry")
        general = guild.add_text_channel("general")
        jo = guild.add_member("jo")
        async with running_bot(settings, fd) as bot:
            for i, (colour, shape) in enumerate([("red", "circle"), ("blue", "star")] * 2):
                await fd.post_message(general, jo, "", attachments=[picture(colour, shape, i)])
            await settled(bot, fd)
            options = {"query": "a red circle", "count": 2}
            asked = await fd.invoke_slash(guild, general, jo, "find", options)
            reply = await asked.wait_reply()
            assert buttons(reply)["find:next"]
            disabled = await asked.wait_reply(predicate=lambda r: not any(buttons(r).values()))
            assert result_ids(disabled) == result_ids(reply)

            # With the token already dead, expiry fails quietly instead of erroring.
            options = {"query": "a blue star", "count": 2}
            asked = await fd.invoke_slash(guild, general, jo, "find", options)
            await asked.wait_reply()
            asked.expire_token()
            caplog.clear()
            await eventually(lambda: _expired(views[-1]), within=30)
            assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def _expired(view: ResultsView) -> bool:
    """The view timed out and its `on_timeout` (a task discord.py starts) has returned."""
    timeout = f"discord-ui-view-timeout-{view.id}"
    return view.is_finished() and not any(
        task.get_name() == timeout and not task.done() for task in asyncio.all_tasks()
    )


def recorded_views(monkeypatch) -> list[ResultsView]:
    """Every `ResultsView` the bot makes from now on, in order."""
    views: list[ResultsView] = []
    made = ResultsView.__init__

    def recorded(self, *args, **kwargs) -> None:
        made(self, *args, **kwargs)
        views.append(self)

    monkeypatch.setattr(ResultsView, "__init__", recorded)
    return views


async def test_buttons_expiring_as_the_bot_stops_raise_nothing(tmp_path, monkeypatch):
    """Buttons that expire in the moments after a stop began, when discord.py has closed its HTTP
    session: disabling them is given up quietly. It raised out of the timeout's task (asyncio
    logs that with a traceback: 'Task exception was never retrieved'), as the soak saw."""
    views = recorded_views(monkeypatch)
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Stopping")
        general = guild.add_text_channel("general")
        jo = guild.add_member("jo")
        async with running_bot(bot_settings(fd, tmp_path), fd) as bot:
            for i, (colour, shape) in enumerate([("red", "circle"), ("blue", "star")] * 2):
                await fd.post_message(general, jo, "", attachments=[picture(colour, shape, i)])
            await settled(bot, fd)
            options = {"query": "a red circle", "count": 2}
            reply = await (await fd.invoke_slash(guild, general, jo, "find", options)).wait_reply()
            assert buttons(reply)["find:next"]
        # Stopped: what discord.py runs when the buttons' time is up.
        (view,) = views
        await view.on_timeout()
