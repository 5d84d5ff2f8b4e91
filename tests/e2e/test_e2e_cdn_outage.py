"""End to end: Discord's CDN down for a while (503s, or 429s with Retry-After). Images posted
meanwhile and history read meanwhile are kept in the jobs table and retried with backoff; once the
CDN answers again every one of them is indexed, once, and found by `/find`.

The backoff settings are small, so an outage of minutes is seconds here, and it spans several
retries of every image."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from retrieval.indexing import Backlog
from tests.fakediscord import FakeDiscord
from tests.helpers import bot_settings, eventually, find, picture, result_ids, running_bot
from tests.tinyclip.shapes import draw, png_bytes

# fetch_retries=0: no quick retries inside one attempt, every failure goes back to the table.
QUICK_BACKOFF = dict(retry_first_s=0.2, retry_max_s=0.8, fetch_retries=0)
LONG_AGO = datetime.now(UTC) - timedelta(days=30)
RETRIES = 3  # each image is tried this many times more while the CDN is down


async def status(fd, guild, channel, member) -> str:
    interaction = await fd.invoke_slash(guild, channel, member, "clipfind status")
    return (await interaction.wait_reply(timeout=30))["content"]


def waiting_line(text: str) -> str:
    (found,) = [row for row in text.splitlines() if row.startswith("**Waiting to be indexed")]
    return found


async def tried(fd: FakeDiscord, urls: list[str], times: int) -> None:
    async def enough() -> bool:
        return all(len(fd.cdn.requests_for(url)) >= times for url in urls)

    await eventually(enough, within=40)


async def test_images_posted_and_read_from_history_during_a_cdn_outage_are_all_indexed(
    tmp_path, database_url
):
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Outage")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        old = [
            fd.add_history_message(
                general,
                alice,
                "",
                attachments=[picture(colour, "circle", seed)],
                at=LONG_AGO + timedelta(minutes=seed),
            )
            for seed, colour in enumerate(("red", "blue"))
        ]
        fd.cdn.go_down(status=503)
        settings = bot_settings(fd, tmp_path, database_url=database_url, **QUICK_BACKOFF)
        async with running_bot(settings, fd) as bot:
            await asyncio.wait_for(bot.backfill.wait_idle(), 30)
            stars = [picture("green", "star", 2), picture("yellow", "star", 3)]
            live = [await fd.post_message(general, alice, "", attachments=[p]) for p in stars]
            linked = fd.host_external_image(
                "tri.png", png_bytes(draw("purple", "triangle", size=160, rng=4)), "image/png"
            )
            preview = [fd.image_embed(linked)]
            live.append(await fd.post_message(general, alice, linked, embeds=preview))
            urls = [m.attachments[0].url for m in old + live[:2]] + [linked]
            await tried(fd, urls, 1 + RETRIES)

            # While it lasts: nothing stored, nothing given up, all five shown as retrying.
            assert await bot.store.count(guild_id=guild.id) == 0
            assert await bot.pipeline.jobs.backlog(guild.id) == Backlog(0, 5, {})
            shown = waiting_line(await status(fd, guild, general, alice))
            assert shown.startswith("**Waiting to be indexed here:** 5 (5 being retried")

            fd.cdn.recover()

            async def all_in() -> bool:
                return await bot.store.count(guild_id=guild.id) == 5

            await eventually(all_in, within=30)
            assert await bot.pipeline.jobs.backlog(guild.id) == Backlog(0, 0, {})
            for message in old + live:
                assert len(await bot.store.known_keys(message.id)) == 1
            reply = await find(fd, guild, general, alice, "a red circle", count=10)
            assert sorted(result_ids(reply)) == sorted(m.id for m in old + live)
            assert "Waiting to be indexed here:** 0" in await status(fd, guild, general, alice)


async def test_a_429_retry_after_is_honoured(tmp_path, database_url):
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Slow down")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        fd.cdn.go_down(status=429, retry_after=2)
        # The default quick retries too: a server that said when to come back is not asked sooner.
        settings = bot_settings(
            fd, tmp_path, database_url=database_url, retry_first_s=0.2, retry_max_s=0.8
        )
        async with running_bot(settings, fd) as bot:
            message = await fd.post_message(
                general, alice, "", attachments=[picture("blue", "square", 1)]
            )
            url = message.attachments[0].url
            await tried(fd, [url], 1 + RETRIES)
            fd.cdn.recover()

            async def stored() -> bool:
                return await bot.store.known_keys(message.id) == {message.attachments[0].id}

            await eventually(stored, within=30)
            asked = fd.cdn.requests_for(url)
            assert [status for _, status in asked] == [429] * (len(asked) - 1) + [200]
            times = [at for at, _ in asked]
            gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
            assert min(gaps) >= 2.0 - 0.05, gaps
            assert await bot.pipeline.jobs.backlog(guild.id) == Backlog(0, 0, {})


async def test_a_429_with_retry_after_pauses_the_cdn_for_every_download(tmp_path, database_url):
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Paused")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        pause_s = 3.0
        fd.cdn.go_down(status=429, retry_after=pause_s)
        settings = bot_settings(fd, tmp_path, database_url=database_url, **QUICK_BACKOFF)
        async with running_bot(settings, fd) as bot:
            first = await fd.post_message(
                general, alice, "", attachments=[picture("red", "circle", 1)]
            )

            async def told() -> bool:  # its download got the 429 and handed the job back
                return (await bot.pipeline.jobs.backlog(guild.id)).retrying == 1

            await eventually(told)
            told_at = fd.cdn.requests_for(first.attachments[0].url)[0][0]
            # Posted after the 429, each on a download worker of its own: none of them asks
            # the CDN before the Retry-After has passed.
            later = [
                await fd.post_message(general, alice, "", attachments=[picture(c, "star", n)])
                for n, c in enumerate(("blue", "green", "yellow"), start=2)
            ]
            urls = [m.attachments[0].url for m in later]
            await tried(fd, urls, 1)
            asked = [at for url in urls for at, _ in fd.cdn.requests_for(url)]
            assert min(asked) >= told_at + pause_s - 0.05, (min(asked) - told_at, pause_s)
            fd.cdn.recover()

            async def all_in() -> bool:
                return await bot.store.count(guild_id=guild.id) == 4

            await eventually(all_in, within=30)
