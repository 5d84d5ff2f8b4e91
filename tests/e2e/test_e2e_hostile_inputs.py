"""End to end, on both databases: what a member can post to break indexing breaks nothing. Names
and links with a NUL, a lone surrogate or 10 kB of text, a picture the model answers NaN for, a
row the database refuses, a link preview whose link does not parse: the good images are stored
and found, the bad ones counted by reason, later posts indexed, and a restart does not wedge."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from bot import refs as message_refs
from retrieval.database.engine import create_engine, ensure_schema
from retrieval.indexing.cursors import BackfillCursors
from tests.db.test_pipeline_refusals import flat_png, nan_for_flat
from tests.e2e.test_e2e_backfill import history_reads
from tests.fakediscord import Attachment, FakeDiscord
from tests.helpers import backfilled, bot_settings, find, picture, result_ids, running_bot, settled
from tests.refusing import refuse_rows
from tests.tinyclip.shapes import draw, png_bytes

LONG_AGO = datetime.now(UTC) - timedelta(days=40)


def preview(fd: FakeDiscord, name: str, colour: str, shape: str, seed: int) -> tuple[str, dict]:
    """A link to a picture on another site, and the preview Discord unfurls for it (its copy
    served by Discord's proxy)."""
    url = fd.host_external_image(name, png_bytes(draw(colour, shape, size=160, rng=seed)), "")
    return url, fd.image_embed(url)


def named(name: str, colour: str, shape: str, seed: int) -> Attachment:
    return Attachment(name, picture(colour, shape, seed).data, "image/png")


async def test_hostile_names_links_and_vectors_hold_up_nothing(tmp_path, database_url, monkeypatch):
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Hostile")
        general = guild.add_text_channel("general")
        mallory = guild.add_member("mallory")
        settings = bot_settings(fd, tmp_path, database_url=database_url)
        async with running_bot(settings, fd) as bot:
            refused = f"refused:{await refuse_rows(bot.engine, 'images', filename='poison.png')}"
            real = bot.encoder.encode_images

            async def answers_nan_for_flat_pictures(batch):
                return nan_for_flat(batch, await real(batch))

            monkeypatch.setattr(bot.encoder, "encode_images", answers_nan_for_flat_pictures)

            # The attack the issue names: a link whose path has %00 gives a file name with a NUL.
            nul_url, nul_embed = preview(fd, "blue-sq\x00uare.png", "blue", "square", 1)
            # A lone surrogate in the preview's link, as Discord's JSON can carry one.
            star_url, star_embed = preview(fd, "green-star.png", "green", "star", 2)
            star_embed["url"] = star_embed["thumbnail"]["url"] = star_url + "?q=\ud800"

            def post(*attachments: Attachment, content: str = "", embeds=()):
                return fd.post_message(
                    general, mallory, content, attachments=attachments, embeds=embeds
                )

            posts = {
                "nul": await post(content=nul_url, embeds=[nul_embed]),
                "surrogate": await post(embeds=[star_embed]),
                "long": await post(named("x" * 10_000 + ".png", "yellow", "triangle", 3)),
                "nan": await post(
                    Attachment("flat.png", flat_png((90, 90, 90)), "image/png"),
                    picture("red", "circle", 4),
                ),
                "poison": await post(
                    named("poison.png", "purple", "cross", 5), picture("orange", "star", 6)
                ),
            }
            await settled(bot, fd)
            backlog = await bot.pipeline.jobs.backlog(guild.id)
            assert backlog.failed == {"non_finite_vector": 1, refused: 1}
            assert (backlog.waiting, backlog.retrying) == (0, 0)
            assert await bot.store.count(guild_id=guild.id) == 5
            for what, query in [
                ("nul", "a blue square"),
                ("surrogate", "a green star"),
                ("long", "a yellow triangle"),
                ("nan", "a red circle"),
                ("poison", "an orange star"),
            ]:
                reply = await find(fd, guild, general, mallory, query, count=3)
                assert posts[what].id in result_ids(reply), what
            hits = await bot.store.search(
                bot.encoder.encoder.encode_texts(["a blue square"])[0],
                scope=_scope(guild.id, bot.encoder.model_id),
                k=10,
            )
            names = {hit.message_id: hit.filename for hit in hits}
            assert names[posts["nul"].id] == "blue-square.png"
            assert names[posts["long"].id] == "x" * 255

            later = await fd.post_message(
                general, mallory, "", attachments=[picture("blue", "cross", 7)]
            )
            await settled(bot, fd)
            assert later.id in result_ids(await find(fd, guild, general, mallory, "a blue cross"))

        # A restart (which may read the channel's history again, and meet the refused row once
        # more) is held up by nothing.
        async with running_bot(settings, fd) as bot:
            await backfilled(bot)
            backlog = await bot.pipeline.jobs.backlog(guild.id)
            assert (backlog.waiting, backlog.retrying) == (0, 0) and refused in backlog.failed
            after = await fd.post_message(
                general, mallory, "", attachments=[picture("green", "square", 8)]
            )
            await settled(bot, fd)
            reply = await find(fd, guild, general, mallory, "a green square", count=3)
            assert after.id in result_ids(reply)


def _scope(guild_id: int, model_id: str):
    from retrieval.store import SearchScope

    return SearchScope(guild_id=guild_id, model_id=model_id)


async def test_a_link_that_does_not_parse_and_a_refused_row_are_passed_by_the_history_walk(
    tmp_path, database_url, caplog
):
    """A port above 65535 used to stop the channel's walk for good, before its cursor moved:
    every start failed at the same page and the re-index clean-up never ran. A job row the
    database refused held up the page's submission, and every later one, forever."""
    engine = create_engine(database_url)
    try:
        await ensure_schema(engine)
        refused = f"refused:{await refuse_rows(engine, 'index_jobs', filename='poison.png')}"
    finally:
        await engine.dispose()
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Old links")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        first = fd.add_history_message(
            general, alice, "", attachments=[picture("red", "circle", 1)], at=LONG_AGO
        )
        bad_url = "https://poster.example:99999/evil.png"
        bad = fd.add_history_message(
            general, alice, bad_url, embeds=[fd.image_embed(bad_url)], at=LONG_AGO
        )
        poison = named("poison.png", "green", "star", 3)
        fd.add_history_message(general, alice, "", attachments=[poison], at=LONG_AGO)
        last = fd.add_history_message(
            general, alice, "", attachments=[picture("blue", "square", 2)], at=LONG_AGO
        )
        settings = bot_settings(fd, tmp_path, database_url=database_url)
        caplog.set_level(logging.WARNING)
        async with running_bot(settings, fd) as bot:
            await backfilled(bot)
            assert await bot.store.known_keys(first.id, guild_id=guild.id)
            assert await bot.store.known_keys(last.id, guild_id=guild.id)
            failed = (await bot.pipeline.jobs.backlog(guild.id)).failed
            assert failed == {"invalid_url": 1, refused: 1}
            cursor = await BackfillCursors(bot.engine).get(general.id)
            assert cursor.complete and cursor.newest_id == last.id
        assert f"of message {bad.id}" in caplog.text and "invalid_url" in caplog.text

        since = len(fd.requests)
        async with running_bot(settings, fd) as bot:
            await backfilled(bot)
        assert history_reads(fd, general, since) == []  # done: nothing to read again


async def test_a_message_the_walk_cannot_handle_is_skipped_counted_and_passed(
    tmp_path, monkeypatch, caplog
):
    """Whatever goes wrong with one message (here a stand-in for a bug), the walk logs its id,
    counts it, and reads on: the channel's cursor moves past it."""
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Odd")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        posts = [
            fd.add_history_message(general, alice, "", attachments=[picture(c, s, i)], at=LONG_AGO)
            for i, (c, s) in enumerate([("red", "circle"), ("green", "star"), ("blue", "cross")])
        ]
        odd = posts[1].id

        def image_refs(message):
            if message.id == odd:
                raise RuntimeError("a message this code cannot read")
            return real(message)

        real = message_refs.image_refs
        # Before the bot starts: its cogs import it as they load.
        monkeypatch.setattr(message_refs, "image_refs", image_refs)
        caplog.set_level(logging.WARNING, logger="bot.backfill")
        async with running_bot(bot_settings(fd, tmp_path), fd) as bot:
            await backfilled(bot)
            assert await bot.store.count(guild_id=guild.id) == 2
            assert bot.backfill_progress.messages_skipped == 1
            assert "1 skipped" in str(bot.backfill_progress)
            cursor = await BackfillCursors(bot.engine).get(general.id)
            assert cursor.complete and cursor.newest_id == posts[-1].id
    (line,) = [r.getMessage() for r in caplog.records if str(odd) in r.getMessage()]
    assert "skipped message" in line and "a message this code cannot read" in line
    assert "Traceback" not in caplog.text


async def test_a_picture_that_failed_for_good_is_not_fetched_again_when_its_message_is_edited(
    tmp_path, database_url
):
    """Discord sends an edited message whole, and the bot queues its pictures again (one may
    have been added): a file that is no picture was downloaded, and counted, once per edit."""
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Edits")
        general = guild.add_text_channel("general")
        mallory = guild.add_member("mallory")
        broken = Attachment("broken.png", b"no picture here", "image/png")
        async with running_bot(bot_settings(fd, tmp_path, database_url=database_url), fd) as bot:
            await fd.wait_ready()
            post = await fd.post_message(
                general, mallory, "", attachments=[broken, picture("red", "circle", 1)]
            )
            await settled(bot, fd)
            broken_url = post.attachments[0].url
            assert len(fd.cdn.requests_for(broken_url)) == 1
            for n in range(3):
                await fd.edit_message(post, content=f"edit {n}")
                await settled(bot, fd)
            added = await fd.edit_message(
                post, attachments=[*post.attachments, picture("blue", "square", 2)]
            )
            await settled(bot, fd)

            assert len(fd.cdn.requests_for(broken_url)) == 1
            assert (await bot.pipeline.jobs.backlog(guild.id)).failed == {"not_an_image": 1}
            assert len(await bot.store.known_keys(added.id, guild_id=guild.id)) == 2
