"""End to end: a job can outlive its signed attachment URL (the bot down for a day with images
still queued). The bot gets a fresh URL from Discord and indexes the image; an attachment that
was deleted meanwhile is still counted as gone for good."""

from __future__ import annotations

from tests.e2e import bot_settings, eventually, running_bot
from tests.fakediscord import FakeDiscord
from tests.fakediscord.cdn import LINK_TTL
from tests.search_helpers import find, picture, result_ids

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
            reply = await find(fd, guild, general, alice, "a red star")
            assert result_ids(reply) == [kept.id]
