"""End to end: members post pictures with words in them, the real bot reads them (real OCR), and
`/find` finds them by what they say: quoted words, `-word`, and CLIP beside the text; on SQLite
and PostgreSQL."""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.e2e.conftest import bot_on
from tests.e2e.test_e2e_privacy_commands import opt_out, run
from tests.e2e.test_e2e_status import line
from tests.fakediscord import Attachment, FakeDiscord
from tests.helpers import bot_settings, eventually, find, picture, result_ids, running_bot, settled
from tests.textimages import caption_sample, missing_fonts, terminal_sample

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        bool(missing_fonts()),
        reason=f"fonts {missing_fonts()} missing: scripts/setup.sh test installs them with apt",
    ),
]

# What each captioned picture says, and the words a member quotes to find it.
CAPTIONS = {
    "english": (caption_sample(["Deploy failed on Friday"], size=22, seed=1), "failed on friday"),
    "meme": (
        caption_sample(
            ["one does not simply", "merge on friday"], style="meme", background="noisy", size=36
        ),
        "does not simply",
    ),
    "terminal": (terminal_sample("connection refused by upstream", seed=3), "refused by upstream"),
    "chinese": (
        caption_sample(["周五部署失败了"], script="han", size=28, background="photo", seed=4),
        "部署失败",
    ),
}

SHAPES = [("red", "circle"), ("blue", "square"), ("green", "star")]


def attachment(name: str, data: bytes) -> Attachment:
    kind = "png" if data.startswith(b"\x89PNG") else "jpeg"
    return Attachment(f"{name}.{kind[:3]}", data, f"image/{kind}")


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["sqlite", "postgres"])
async def posted(request, tmp_path_factory):
    """A server where the captioned pictures, three shapes and a captioned red circle were
    posted, indexed and read."""
    async with bot_on(request, tmp_path_factory, ocr=True) as (fd, bot):
        guild = fd.add_guild("Screenshots")
        general = guild.add_text_channel("general")
        alice, bob = guild.add_member("alice"), guild.add_member("bob")
        await fd.wait_ready()
        ids = {}
        for name, (sample, _) in CAPTIONS.items():
            message = await fd.post_message(
                general, alice, "", attachments=[attachment(name, sample.data)]
            )
            ids[name] = message.id
        for i, (colour, shape) in enumerate(
            [("red", "circle"), ("blue", "square"), ("green", "star")]
        ):
            message = await fd.post_message(
                general, bob, "", attachments=[picture(colour, shape, i)]
            )
            ids[f"{colour} {shape}"] = message.id
        done = caption_sample(["Deploy succeeded on Monday"], size=22, seed=7)
        message = await fd.post_message(general, bob, "", attachments=[attachment("ok", done.data)])
        ids["succeeded"] = message.id
        await settled(bot, fd)
        await bot.services.reading.join()
        yield fd, bot, guild, general, alice, ids


@pytest.mark.parametrize("name", list(CAPTIONS))
async def test_quoted_words_of_a_caption_bring_its_picture_first(posted, name):
    fd, bot, guild, general, alice, ids = posted
    words = CAPTIONS[name][1]
    reply = await find(fd, guild, general, alice, f'"{words}"')
    assert result_ids(reply)[0] == ids[name], reply["content"]
    first = reply["embeds"][0]["description"]
    assert "says:" in first and words in first


async def test_quoted_words_only_show_pictures_that_say_them(posted):
    fd, bot, guild, general, alice, ids = posted
    reply = await find(fd, guild, general, alice, '"deploy" screenshot', count=10)
    assert set(result_ids(reply)) == {ids["english"], ids["succeeded"]}


async def test_a_minus_word_leaves_out_the_picture_that_says_it(posted):
    fd, bot, guild, general, alice, ids = posted
    both = await find(fd, guild, general, alice, "deploy", count=10)
    assert {ids["english"], ids["succeeded"]} <= set(result_ids(both))
    reply = await find(fd, guild, general, alice, "deploy -friday", count=10)
    shown = result_ids(reply)
    assert ids["succeeded"] in shown and ids["english"] not in shown
    assert ids["meme"] not in shown  # "merge on friday"


async def test_a_plain_description_still_finds_the_picture_first(posted):
    """CLIP alone decides a query no picture's text holds: the red circle among captions."""
    fd, bot, guild, general, alice, ids = posted
    reply = await find(fd, guild, general, alice, "a red circle", count=5)
    assert result_ids(reply)[0] == ids["red circle"]
    assert "says:" not in reply["embeds"][0]["description"]


async def test_only_left_out_words_is_a_question_to_fix(posted):
    fd, bot, guild, general, alice, ids = posted
    reply = await find(fd, guild, general, alice, "-friday")
    assert reply["content"].startswith("Tell me what to look for as well as what to leave out")
    assert not reply.get("embeds")


async def test_an_opt_out_deletes_the_words_read_from_the_members_pictures(posted):
    fd, bot, guild, general, alice, ids = posted
    status = await run(fd, guild, general, alice, "privacy status")
    assert "**Words read from your pictures:** 4 images" in status["content"]
    await opt_out(fd, guild, general, alice)
    assert await bot.store.count_words(author_id=alice.id) == 0
    reply = await find(fd, guild, general, alice, '"failed on friday"')
    assert not reply.get("embeds")


async def test_the_owner_sees_what_the_reading_lane_did(posted):
    fd, bot, guild, general, alice, ids = posted
    owner = guild.add_existing_user(fd.owner_user)
    said = (await run(fd, guild, general, owner, "clipfind status"))["content"]
    counters = bot.services.reading.counters
    assert counters.indexed >= len(ids) - counters.reused
    assert line(said, "Words read by this process since start").endswith(
        f":** {counters.indexed} pictures read, {counters.reused} copied from the same picture, "
        f"0 unreadable, 0 retries; 0 in hand"
    )
    assert "from 1 process (bot on " in line(said, "Reading, whole cluster")
    # "being read" is what the processes' heartbeats last reported (every ~15 s): a reading
    # done since may still be counted there.
    assert "0 pictures waiting, 0 waiting for a retry, " in line(
        said, "Words to read, whole cluster"
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["sqlite", "postgres"])
async def vectors_only(request, tmp_path_factory):
    """A bot that reads words but takes only the CLIP lane (WORKER_LANES=clip): its readings
    wait for a process that takes the OCR lane."""
    async with bot_on(request, tmp_path_factory, ocr=True, worker_lanes="clip") as pair:
        yield pair


async def test_pictures_are_found_by_clip_before_their_words_are_read(vectors_only):
    fd, bot = vectors_only
    assert bot.services.reading is None
    guild = fd.add_guild("Waiting")
    general = guild.add_text_channel("general")
    alice, bob = guild.add_member("alice"), guild.add_member("bob")
    await fd.wait_ready()
    english = CAPTIONS["english"][0]
    said = await fd.post_message(general, alice, "", attachments=[attachment("e", english.data)])
    circle = await fd.post_message(general, bob, "", attachments=[picture("red", "circle", 1)])
    await settled(bot, fd)
    reply = await find(fd, guild, general, bob, "a red circle")
    assert result_ids(reply)[0] == circle.id
    status = await run(fd, guild, general, bob, "clipfind status")
    assert "**Pictures whose words are still to be read here:** 2" in status["content"]
    # Not read yet: quoting its words finds nothing (yet), the picture itself is there.
    assert not (await find(fd, guild, general, bob, '"failed on friday"')).get("embeds")
    assert said.id in result_ids(await find(fd, guild, general, bob, "text", count=10))

    await opt_out(fd, guild, general, alice)  # her reading goes with her image
    await eventually(lambda: _readings_are(bot, guild.id, 1))


async def _readings_are(bot, guild_id: int, n: int) -> bool:
    from retrieval.indexing import OCR_LANE

    return (await bot.jobs.for_lane(OCR_LANE).backlog(guild_id)).waiting == n


async def test_pictures_stored_before_reading_was_on_are_read_at_the_next_start(tmp_path):
    """Reading turned on later: what was indexed before is queued once, at the lowest priority,
    and read through a fresh link (the row keeps Discord's link without its signature)."""
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Old posts")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        english = CAPTIONS["english"][0]
        async with running_bot(bot_settings(fd, tmp_path), fd) as bot:  # OCR off
            said = await fd.post_message(
                general, alice, "", attachments=[attachment("e", english.data)]
            )
            await settled(bot, fd)
            assert await bot.store.count_words(author_id=alice.id) == 0
        refreshed = _refreshes(fd)
        async with running_bot(bot_settings(fd, tmp_path, ocr=True), fd) as bot:
            await eventually(lambda: _words_of(bot, alice.id, 1), within=120)
            reply = await find(fd, guild, general, alice, '"failed on friday"')
            assert result_ids(reply) == [said.id]
        assert _refreshes(fd) > refreshed  # its link, signed again by Discord


def _refreshes(fd) -> int:
    return sum(1 for r in fd.requests if r.path.endswith("/attachments/refresh-urls"))


async def _words_of(bot, author_id: int, n: int) -> bool:
    return await bot.store.count_words(author_id=author_id) == n
