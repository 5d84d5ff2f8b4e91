"""End to end: "Find similar images" on a message, and `/find` with a picture instead of words."""

from __future__ import annotations

import io

import pytest
import pytest_asyncio
from PIL import Image

from bot.cogs.search import NO_IMAGE, SIMILAR
from tests.fakediscord import Attachment
from tests.helpers import bot_world, picture, result_ids, settled
from tests.tinyclip.shapes import draw, jpeg_bytes, png_bytes

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    # The stand-in's CDN opens the 100-megapixel upload with Pillow to describe it.
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory):
    async with bot_world(tmp_path_factory.mktemp("db")) as (fd, bot):
        guild = fd.add_guild("Lookalikes")
        general = guild.add_text_channel("general")
        kim, robot = guild.add_member("kim"), guild.add_member("robot", bot=True)
        await fd.wait_ready()
        yield fd, bot, guild, general, kim, robot


async def similar(fd, guild, channel, member, message) -> dict:
    asked = await fd.invoke_message_command(guild, channel, member, SIMILAR, message)
    reply = await asked.wait_reply(timeout=30)
    assert reply["flags"] & 64 and asked.deferred
    return reply


async def test_an_indexed_message_finds_its_near_duplicate_first_and_not_itself(world):
    fd, bot, guild, general, kim, _ = world
    drawing = draw("purple", "triangle", size=160, rng=5)
    source = await fd.post_message(
        general, kim, "", attachments=[Attachment("tri.png", png_bytes(drawing), "image/png")]
    )
    copy = await fd.post_message(
        general, kim, "", attachments=[Attachment("tri.jpg", jpeg_bytes(drawing, 85))]
    )
    others = [
        await fd.post_message(general, kim, "", attachments=[picture(c, s, 50 + i)])
        for i, (c, s) in enumerate([("purple", "triangle"), ("green", "circle"), ("red", "star")])
    ]
    await settled(bot, fd)
    encoded, fetched = bot.encoder.counters.image_queries, len(fd.cdn.hits)

    shown = result_ids(await similar(fd, guild, general, kim, source))
    assert shown[0] == copy.id and source.id not in shown
    assert set(shown) == {copy.id, *(m.id for m in others)}
    # Its stored vector was used: nothing downloaded, nothing encoded.
    assert bot.encoder.counters.image_queries == encoded and len(fd.cdn.hits) == fetched


async def test_an_unindexed_message_is_downloaded_and_encoded_ahead_of_indexing(world):
    fd, bot, guild, general, kim, robot = world
    circle = await fd.post_message(general, kim, "", attachments=[picture("orange", "circle", 61)])
    # Other bots' messages are not indexed, but members may still ask about them.
    posted = await fd.post_message(
        general, robot, "", attachments=[picture("orange", "circle", 62)]
    )
    await settled(bot, fd)
    assert await bot.store.known_keys(posted.id) == set()
    fd.expire_attachment_links()  # the menu's message carries freshly signed links
    encoded = bot.encoder.counters.image_queries

    shown = result_ids(await similar(fd, guild, general, kim, posted))
    assert shown[0] == circle.id and posted.id not in shown
    assert bot.encoder.counters.image_queries == encoded + 1


async def test_a_message_without_an_image_says_so(world):
    fd, _, guild, general, kim, _ = world
    words = await fd.post_message(general, kim, "just words")
    assert (await similar(fd, guild, general, kim, words))["content"] == NO_IMAGE


async def test_find_with_a_picture_searches_by_it(world):
    fd, bot, guild, general, kim, _ = world
    star = await fd.post_message(general, kim, "", attachments=[picture("yellow", "star", 71)])
    await settled(bot, fd)
    encoded = bot.encoder.counters.image_queries

    upload = picture("yellow", "star", 72)  # a new drawing: encoded for the query
    asked = await fd.invoke_slash(
        guild, general, kim, "find", {"query": "like this", "image": upload}
    )
    reply = await asked.wait_reply()
    assert result_ids(reply)[0] == star.id and "Images like your picture" in reply["content"]
    assert bot.encoder.counters.image_queries == encoded + 1

    same = Attachment("again.png", picture("yellow", "star", 71).data, "image/png")
    asked = await fd.invoke_slash(guild, general, kim, "find", {"query": "this", "image": same})
    assert result_ids(await asked.wait_reply())[0] == star.id
    # Known bytes are encoded too: a stored vector would answer faster, and tell where the
    # same file was posted.
    assert bot.encoder.counters.image_queries == encoded + 2


def huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")  # 100 MP, a few kB
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("upload", "answer"),
    [
        (Attachment("notes.png", b"just some text", "image/png"), "isn't an image I can read"),
        (
            Attachment("broken.png", png_bytes(draw("red", "circle", rng=1))[:300], "image/png"),
            "couldn't decode that image",
        ),
        (Attachment("huge.png", huge_png(), "image/png"), "too large"),
    ],
    ids=["not-an-image", "truncated", "too-many-pixels"],
)
async def test_bad_pictures_get_a_clear_answer(world, upload, answer):
    fd, _, guild, general, kim, _ = world
    asked = await fd.invoke_slash(guild, general, kim, "find", {"query": "this", "image": upload})
    reply = await asked.wait_reply()
    assert answer in reply["content"] and not reply["embeds"]
