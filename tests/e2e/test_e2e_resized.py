"""End to end: the bot reads each picture from the media proxy's copy at the size the model needs
(here 96 px, 1.5x the tiny model's 64), and downloads the original only when it must: the proxy
refuses, the message gives no size. The stand-in counts the bytes it serves per picture,
originals and copies alike, and the copies it makes."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.fakediscord import Attachment, FakeDiscord
from tests.fakediscord.media import Resize, render
from tests.helpers import bot_settings, find, result_ids, running_bot, settled
from tests.tinyclip.shapes import draw, png_bytes

pytestmark = pytest.mark.asyncio(loop_scope="module")

SIDE = 480  # the pictures posted; the copies asked for are 96 px on their short side


def big(colour: str, shape: str, seed: int) -> bytes:
    return png_bytes(draw(colour, shape, size=SIDE, rng=seed))


def statuses(fd: FakeDiscord, url: str) -> list[int]:
    return [status for _, status in fd.cdn.requests_for(url)]


async def server(fd: FakeDiscord, name: str):
    """(a new server, its #general, its member alice), once the bot knows them."""
    guild = fd.add_guild(name)
    general, alice = guild.add_text_channel("general"), guild.add_member("alice")
    await fd.wait_ready()
    return guild, general, alice


async def test_an_attachment_is_read_from_a_copy_the_size_the_model_needs(world):
    fd, bot = world
    guild, general, alice = await server(fd, "Copies")
    original = big("red", "circle", 1)
    posted = await fd.post_message(
        general, alice, "", attachments=[Attachment("circle.png", original, "image/png")]
    )
    await settled(bot, fd)

    url = posted.attachments[0].url
    assert statuses(fd, url) == [200]  # one request: the copy's
    assert fd.cdn.copies_of(url) == [(96, 96)]
    copy, _, _ = render(original, Resize(96, 96, "WEBP", 90))  # PNG is asked as WebP
    assert fd.cdn.served_for(url) == len(copy) < len(original) / 10
    assert result_ids(await find(fd, guild, general, alice, "a red circle")) == [posted.id]


async def test_a_refused_copy_falls_back_to_the_original(world):
    fd, bot = world
    guild, general, alice = await server(fd, "Refused")
    before = bot.pipeline.counters.resize_fallbacks["http_415"]
    original = big("blue", "square", 2)
    fd.cdn.refuse_resizing = 415
    try:
        posted = await fd.post_message(
            general, alice, "", attachments=[Attachment("square.png", original, "image/png")]
        )
        await settled(bot, fd)
    finally:
        fd.cdn.refuse_resizing = None

    url = posted.attachments[0].url
    assert statuses(fd, url) == [415, 200]
    assert fd.cdn.served_for(url) == len(original)
    assert bot.pipeline.counters.resize_fallbacks["http_415"] == before + 1
    assert result_ids(await find(fd, guild, general, alice, "a blue square")) == [posted.id]


async def test_a_picture_without_dimensions_is_downloaded_whole(world):
    """Discord gives no size for a picture it could not measure, and its proxy refuses those:
    the bot does not ask."""
    fd, bot = world
    guild, general, alice = await server(fd, "Unmeasured")
    original = big("yellow", "triangle", 3)
    upload = Attachment("triangle.png", original, "image/png", measured=False)
    posted = await fd.post_message(general, alice, "", attachments=[upload])
    await settled(bot, fd)

    url = posted.attachments[0].url
    assert statuses(fd, url) == [200]
    assert fd.cdn.served_for(url) == len(original) and fd.cdn.copies_of(url) == []
    assert result_ids(await find(fd, guild, general, alice, "a yellow triangle")) == [posted.id]


async def test_an_animated_gif_is_read_from_a_still_copy_of_its_first_frame(world):
    """Asked as WebP without `animated=true`, the proxy answers with the first frame, still: the
    frame the pipeline reads of an original GIF too. The later frames never count."""
    fd, bot = world
    guild, general, alice = await server(fd, "Animated")
    frames = [draw("green", "star", size=SIDE, rng=4), draw("blue", "square", size=SIDE, rng=5)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    gif = buf.getvalue()
    animated = await fd.post_message(
        general, alice, "", attachments=[Attachment("dance.gif", gif, "image/gif")]
    )
    square = await fd.post_message(
        general, alice, "", attachments=[Attachment("square.png", big("blue", "square", 6))]
    )
    await settled(bot, fd)

    url = animated.attachments[0].url
    assert animated.attachments[0].animated and statuses(fd, url) == [200]
    copy, content_type, _ = render(gif, Resize(96, 96, "WEBP", 90))
    with Image.open(io.BytesIO(copy)) as still:
        assert content_type == "image/webp" and not getattr(still, "is_animated", False)
    assert fd.cdn.served_for(url) == len(copy) < len(gif) / 10
    assert result_ids(await find(fd, guild, general, alice, "a green star", count=1)) == [
        animated.id
    ]
    assert result_ids(await find(fd, guild, general, alice, "a blue square", count=1)) == [
        square.id
    ]


async def test_link_previews_are_read_from_a_copy_when_the_preview_gives_a_size(world):
    fd, bot = world
    guild, general, alice = await server(fd, "Previews")
    sized = big("purple", "cross", 7)
    linked = fd.host_external_image("cross.png", sized, "image/png")
    shown = await fd.post_message(general, alice, linked, embeds=[fd.image_embed(linked)])
    unsized = big("orange", "circle", 8)
    bare = fd.host_external_image("circle.png", unsized, "image/png")
    embed = fd.image_embed(bare)
    embed["thumbnail"] |= {"width": 0, "height": 0}  # a preview that gives no size
    plain = await fd.post_message(general, alice, bare, embeds=[embed])
    await settled(bot, fd)

    assert statuses(fd, linked) == [200] and fd.cdn.copies_of(linked) == [(96, 96)]
    assert fd.cdn.served_for(linked) < len(sized) / 10
    assert statuses(fd, bare) == [200] and fd.cdn.copies_of(bare) == []
    assert fd.cdn.served_for(bare) == len(unsized)
    assert result_ids(await find(fd, guild, general, alice, "a purple cross", count=1)) == [
        shown.id
    ]
    assert result_ids(await find(fd, guild, general, alice, "an orange circle", count=1)) == [
        plain.id
    ]


async def test_reposts_read_as_copies_share_one_identity(world):
    """The proxy's copy of one original at one size is the same bytes each time: a repost is
    known by its hash, its vector reused, and searches show it once."""
    fd, bot = world
    guild = fd.add_guild("Reposts")
    general = guild.add_text_channel("general")
    alice, bob = guild.add_member("alice"), guild.add_member("bob")
    await fd.wait_ready()
    original = big("red", "star", 9)
    first = await fd.post_message(general, alice, "", attachments=[Attachment("a.png", original)])
    await settled(bot, fd)
    reused = bot.pipeline.counters.reused
    again = await fd.post_message(general, bob, "", attachments=[Attachment("b.png", original)])
    await settled(bot, fd)

    assert fd.cdn.copies_of(first.attachments[0].url) == [(96, 96)]
    assert fd.cdn.copies_of(again.attachments[0].url) == [(96, 96)]
    assert bot.pipeline.counters.reused == reused + 1
    reply = await find(fd, guild, general, alice, "a red star")
    assert len(reply["embeds"]) == 1 and "+1 repost" in reply["embeds"][0]["description"]


async def test_a_picture_indexed_whole_before_and_reposted_as_a_copy_shows_once(tmp_path):
    """Rows indexed from originals (FETCH_RESIZED=off, or before it existed) stay as they are;
    a repost read as a copy hashes differently, so it is encoded again, and searches group the
    two by their vectors. The tiny test model spreads a copy and its original further apart
    (cosine 0.984-1.0) than ViT-B-32 does (0.9998 and up, benchmarks/RESULTS.md), so this test
    groups at 0.98 instead of the default 0.995."""
    original = big("green", "cross", 10)
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Upgrade")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        old_settings = bot_settings(fd, tmp_path, fetch_resized=False)
        async with running_bot(old_settings, fd) as bot:
            before = await fd.post_message(
                general, alice, "", attachments=[Attachment("old.png", original)]
            )
            await settled(bot, fd)
        assert fd.cdn.copies_of(before.attachments[0].url) == []
        assert fd.cdn.served_for(before.attachments[0].url) == len(original)

        settings = bot_settings(fd, tmp_path, find_duplicate_threshold=0.98)
        async with running_bot(settings, fd) as bot:
            after = await fd.post_message(
                general, alice, "", attachments=[Attachment("new.png", original)]
            )
            await settled(bot, fd)
            assert fd.cdn.copies_of(after.attachments[0].url) == [(96, 96)]
            assert (bot.pipeline.counters.indexed, bot.pipeline.counters.reused) == (1, 0)
            reply = await find(fd, guild, general, alice, "a green cross")
    assert len(reply["embeds"]) == 1 and "+1 repost" in reply["embeds"][0]["description"]
    assert result_ids(reply)[0] in (before.id, after.id)


async def test_the_size_cap_holds_for_what_is_downloaded(tmp_path):
    """MAX_IMAGE_BYTES caps the bytes the bot reads: an original over it is indexed from its
    copy, and skipped when only the original could be read."""
    original = big("blue", "circle", 11)
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Capped")
        general, alice = guild.add_text_channel("general"), guild.add_member("alice")
        # No history walk: it could queue the posts a second time, as the live events race
        # the first pass, and a refused image is refused (and counted) each time it is queued.
        settings = bot_settings(fd, tmp_path, max_image_bytes=len(original) // 2, backfill=False)
        async with running_bot(settings, fd) as bot:
            copied = await fd.post_message(
                general, alice, "", attachments=[Attachment("a.png", original)]
            )
            unsized = Attachment("b.png", big("red", "cross", 12), measured=False)
            skipped = await fd.post_message(general, alice, "", attachments=[unsized])
            await settled(bot, fd)
            assert await bot.store.known_keys(copied.id) == {copied.attachments[0].id}
            assert await bot.store.known_keys(skipped.id) == set()
            assert (await bot.pipeline.jobs.backlog(guild.id)).failed == {"too_large": 1}
    assert statuses(fd, skipped.attachments[0].url) == []  # refused by its declared size
