"""End to end: a job can outlive its signed attachment URL (the bot down for a day with images
still queued). The bot gets a fresh URL from Discord and indexes the image; an attachment that
was deleted meanwhile is still counted as gone for good."""

from __future__ import annotations

from tests.fakediscord import FakeDiscord
from tests.fakediscord.cdn import LINK_TTL
from tests.helpers import bot_settings, eventually, find, picture, result_ids, running_bot

REFRESH = "/attachments/refresh-urls"


def refreshed(fd: FakeDiscord) -> list[str]:
    """The URLs (without their signature) of every refresh-urls request so far."""
    calls = [r.json for r in fd.requests if r.method == "POST" and r.path == REFRESH]
    return [unsigned(url) for call in calls for url in call["attachment_urls"]]


def unsigned(url: str) -> str:
    return url.split("?")[0]


async def test_a_job_whose_url_expired_while_the_bot_was_down_is_indexed(tmp_path):
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Expired links")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        settings = bot_settings(fd, tmp_path, retry_first_s=0.2, retry_max_s=0.8, fetch_retries=0)
        fd.cdn.go_down(status=503)
        async with running_bot(settings, fd) as bot:
            star, circle = picture("red", "star", 1), picture("blue", "circle", 2)
            kept = await fd.post_message(general, alice, "", attachments=[star])
            deleted = await fd.post_message(general, alice, "", attachments=[circle])
            old_urls = [m.attachments[0].url for m in (kept, deleted)]

            async def queued_and_tried() -> bool:
                tried = all(fd.cdn.requests_for(url) for url in old_urls)
                return tried and (await bot.pipeline.jobs.backlog(guild.id)).retrying == 2

            await eventually(queued_and_tried)
        # While the bot is down: a day passes (every link it holds expires), one of the two
        # messages is deleted, and the CDN is back.
        await fd.delete_message(deleted, dispatch=False)
        fd.advance_clock(LINK_TTL + 3600)
        fd.cdn.recover()

        async with running_bot(settings, fd) as bot:

            async def settled() -> bool:
                backlog = await bot.pipeline.jobs.backlog(guild.id)
                return not backlog.waiting and not backlog.retrying

            await eventually(settled, within=30)
            assert await bot.store.known_keys(kept.id) == {kept.attachments[0].id}
            assert await bot.store.known_keys(deleted.id) == set()
            # The deleted one is gone for good, not retried forever; the kept one is not lost.
            assert (await bot.pipeline.jobs.backlog(guild.id)).failed == {"http_404": 1}
            assert sorted(refreshed(fd)) == sorted(unsigned(url) for url in old_urls)
            # The fresh link's signature opened the media proxy's copy too: no original read.
            assert fd.cdn.copies_of(kept.attachments[0].url) == [(96, 96)]
            assert fd.cdn.served_for(kept.attachments[0].url) < len(star.data) / 4
            reply = await find(fd, guild, general, alice, "a red star")
            assert result_ids(reply) == [kept.id]


def refresh_calls(fd: FakeDiscord) -> int:
    return sum(1 for r in fd.requests if r.method == "POST" and r.path == REFRESH)


async def queued_while_the_cdn_is_down(fd: FakeDiscord, settings, guild, count: int) -> None:
    """A run of the bot that reads ``count`` images from history and cannot download any (the
    CDN is down): they wait in the jobs table, with the links read then, when it stops."""
    fd.cdn.go_down(status=503)
    async with running_bot(settings, fd) as bot:

        async def waiting() -> bool:
            return (await bot.pipeline.jobs.backlog(guild.id)).retrying == count

        await eventually(waiting, within=60)


def history(fd: FakeDiscord, count: int):
    guild = fd.add_guild("Old links")
    general = guild.add_text_channel("general")
    alice = guild.add_member("alice")
    shapes = ("circle", "square", "star", "triangle", "cross")
    colours = ("red", "blue", "green", "yellow", "purple", "orange")
    messages = [
        fd.add_history_message(
            general, alice, "", attachments=[picture(colours[n % 6], shapes[n % 5], n)]
        )
        for n in range(count)
    ]
    return guild, general, alice, messages


async def test_many_links_that_expired_while_the_bot_was_down_cost_few_refreshes(tmp_path):
    async with FakeDiscord() as fd:
        guild, _, _, messages = history(fd, 40)
        settings = bot_settings(fd, tmp_path, retry_first_s=0.2, retry_max_s=0.8, fetch_retries=0)
        await queued_while_the_cdn_is_down(fd, settings, guild, len(messages))
        fd.advance_clock(LINK_TTL + 3600)  # a day later every link the jobs hold has expired
        fd.cdn.recover()
        before = refresh_calls(fd)

        async with running_bot(settings, fd) as bot:

            async def all_in() -> bool:
                return await bot.store.count(guild_id=guild.id) == len(messages)

            await eventually(all_in, within=60)
        # The first 404s tell that the links read with theirs are dead too: refreshed together,
        # 50 to a request, instead of one request per image.
        assert refresh_calls(fd) - before <= 3
        assert sorted(set(refreshed(fd))) == sorted(
            unsigned(m.attachments[0].url) for m in messages
        )


async def test_a_rate_limited_refresh_pauses_those_images_and_holds_up_no_other(tmp_path):
    async with FakeDiscord() as fd:
        guild, general, alice, messages = history(fd, 10)  # more than the 8 download workers
        settings = bot_settings(fd, tmp_path, retry_first_s=0.2, retry_max_s=0.8, fetch_retries=0)
        await queued_while_the_cdn_is_down(fd, settings, guild, len(messages))
        fd.advance_clock(LINK_TTL + 3600)
        fd.cdn.recover()
        limit = fd.rate_limit("POST", REFRESH, retry_after=3600)

        async with running_bot(settings, fd) as bot:
            fresh = [
                await fd.post_message(general, alice, "", attachments=[picture("blue", "star", n)])
                for n in (50, 51)
            ]

            async def fresh_in_and_old_paused() -> bool:
                stored = [await bot.store.known_keys(m.id) for m in fresh]
                return all(stored) and not await bot.pipeline.jobs.due(at_most=20)

            await eventually(fresh_in_and_old_paused, within=60)
            # One request found the limit; the others waiting for a link were told, not sent.
            assert limit.answered == 1
            assert (await bot.pipeline.jobs.backlog(guild.id)).retrying == len(messages)
            for message in messages:
                assert not await bot.store.known_keys(message.id)
