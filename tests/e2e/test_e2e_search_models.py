"""Models and help: a multilingual model can be configured, a model switch re-indexes history
(another model's vectors are never searched), and `/clipfind help` plus every description
explain the commands."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from bot.help import COMMANDS, help_text
from retrieval.config import load_settings
from retrieval.database.engine import create_engine, ensure_schema
from retrieval.encoding.clip import Encoder
from retrieval.errors import ModelUnavailable
from retrieval.store import ImageRecord, open_store
from tests.fakediscord import FakeDiscord
from tests.helpers import backfilled, bot_settings, find, picture, result_ids, running_bot, settled
from tests.tinyclip import CHECKPOINT_PATH

MULTILINGUAL = ("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k")
MULTILINGUAL_ID = "/".join(MULTILINGUAL)


def test_the_multilingual_model_is_accepted_and_offline_says_what_to_do(tiny_encoder):
    settings = load_settings(
        _env_file=None, clip_model=MULTILINGUAL[0], clip_pretrained=MULTILINGUAL[1]
    )
    assert (settings.clip_model, settings.clip_pretrained) == MULTILINGUAL

    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as refused:
        Encoder.load(model=settings.clip_model, pretrained=settings.clip_pretrained, device="cpu")
    assert time.monotonic() - started < 5, "offline must fail at once, not after hub retries"
    message = str(refused.value)
    assert "Hugging Face Hub is not reachable" in message and "CLIP_PRETRAINED" in message
    # The failure names the model id its vectors would carry: never the tiny model's.
    assert MULTILINGUAL_ID in message and tiny_encoder.model_id != MULTILINGUAL_ID


async def test_vectors_of_another_model_are_never_searched_and_go_once_re_read(tmp_path, caplog):
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path)
        guild = fd.add_guild("Switched")
        general = guild.add_text_channel("general")
        lena = guild.add_member("lena")
        engine = create_engine(settings.database_url)
        try:
            await ensure_schema(engine)
            store = open_store(engine)
            earlier = np.ones(512, dtype=np.float32) / 512**0.5
            await store.upsert([foreign_record(guild.id, general.id, lena.id, earlier)])
            await store.close()
        finally:
            await engine.dispose()

        caplog.set_level(logging.WARNING, logger="retrieval.indexing.model_switch")
        async with running_bot(settings, fd) as bot:
            warned = [r.getMessage() for r in caplog.records if "re-indexing" in r.getMessage()]
            assert len(warned) == 1 and f"1 from {MULTILINGUAL_ID}" in warned[0]
            await backfilled(bot)
            # Its message is not in the channel's history: nothing to re-encode, so it went.
            assert await bot.store.model_counts() == {}

            posted = await fd.post_message(
                general, lena, "", attachments=[picture("green", "star", 1)]
            )
            await settled(bot, fd)
            reply = await find(fd, guild, general, lena, "a green star", count=10)
            assert result_ids(reply) == [posted.id]


async def test_a_model_switch_re_indexes_history_once(tmp_path, caplog):
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Upgraded")
        general = guild.add_text_channel("general")
        cats = guild.add_thread(general, "cats", archived=True)
        lena = guild.add_member("lena")
        posts = [
            fd.add_history_message(where, lena, "", attachments=[picture(c, s, i)])
            for i, (where, c, s) in enumerate(
                [(general, "red", "circle"), (general, "blue", "square"), (cats, "green", "star")]
            )
        ]
        trained = bot_settings(fd, tmp_path)
        async with running_bot(trained, fd) as bot:
            await backfilled(bot)
            first = bot.encoder.model_id
            assert await bot.store.model_counts() == {first: 3}
        await fd.delete_message(posts[1], dispatch=False)  # gone while the bot was down

        switched = bot_settings(
            fd, tmp_path, clip_pretrained=str(same_weights_other_file(tmp_path))
        )
        since = len(fd.requests)
        async with running_bot(switched, fd) as bot:
            second = bot.encoder.model_id
            assert second != first and bot.reindexing == {first: 3}
            status = await fd.invoke_slash(guild, general, lena, ("clipfind", "status"))
            assert "Re-indexing" in (await status.wait_reply())["content"]
            await backfilled(bot)
            # Same rows, new vectors; the deleted message's old vector did not survive.
            assert await bot.store.model_counts() == {second: 2}
            assert await bot.store.known_keys(posts[2].id, second) == {posts[2].attachments[0].id}
            reply = await find(fd, guild, general, lena, "a red circle", count=1)
            assert result_ids(reply) == [posts[0].id]
        assert history_read(fd, since) == {general.id, cats.id}  # everything read again

        since = len(fd.requests)
        async with running_bot(switched, fd) as bot:
            await backfilled(bot)
            assert bot.reindexing == {} and await bot.store.model_counts() == {second: 2}
        assert history_read(fd, since) == set()  # caught up: the re-index is not done twice


async def test_a_model_switch_with_an_age_window_keeps_what_it_does_not_re_read(
    tmp_path, database_url
):
    """BACKFILL_MAX_AGE_DAYS limits what a switch reads again, not what stays: images older
    than the window are still on Discord, so they keep the old model's vector (counted as not
    re-indexed); a message deleted inside the window loses its old vector. Voice chats too."""
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Windowed")
        general, lounge = guild.add_text_channel("general"), guild.add_voice_channel("lounge")
        lena = guild.add_member("lena")
        long_ago = datetime.now(UTC) - timedelta(days=400)
        old = [
            fd.add_history_message(where, lena, "", attachments=[picture(c, s, i)], at=long_ago)
            for i, (where, c, s) in enumerate(
                [(general, "red", "circle"), (lounge, "blue", "square")]
            )
        ]
        recent = [
            fd.add_history_message(where, lena, "", attachments=[picture(c, s, i)])
            for i, (where, c, s) in enumerate(
                [(general, "green", "star"), (lounge, "yellow", "cross")], 2
            )
        ]
        async with running_bot(bot_settings(fd, tmp_path, database_url=database_url), fd) as bot:
            await backfilled(bot)
            first = bot.encoder.model_id
            assert await bot.store.model_counts() == {first: 4}
        await fd.delete_message(recent[1], dispatch=False)  # gone while the bot was down

        switched = bot_settings(
            fd,
            tmp_path,
            database_url=database_url,
            clip_pretrained=str(same_weights_other_file(tmp_path)),
            backfill_max_age_days=30,
        )
        async with running_bot(switched, fd) as bot:
            second = bot.encoder.model_id
            await backfilled(bot)
            assert await bot.store.model_counts() == {first: 2, second: 1}
            for message in old:
                assert await bot.store.known_keys(message.id, first) == {message.attachments[0].id}
            assert await bot.store.known_keys(recent[0].id, second) == {recent[0].attachments[0].id}
            status = await fd.invoke_slash(guild, general, lena, ("clipfind", "status"))
            content = (await status.wait_reply())["content"]
            assert "2 images here still to do" in content and "older than 30 days" in content


def history_read(fd: FakeDiscord, since: int) -> set[int]:
    """Channels whose message history the bot asked for since request ``since``."""
    return {
        int(r.path.split("/")[2])
        for r in fd.requests[since:]
        if r.method == "GET" and r.path.endswith("/messages")
    }


def same_weights_other_file(tmp_path):
    """The tiny model's weights saved again in fp32: other bytes, so another model id, and the
    same answers (fp16 values are exact in fp32)."""
    import torch

    state = torch.load(CHECKPOINT_PATH, weights_only=True)
    path = tmp_path / "tiny-clip-fp32.pt"
    torch.save({k: v.float() for k, v in state.items()}, path)
    return path


def foreign_record(guild_id: int, channel_id: int, author_id: int, vector) -> ImageRecord:
    return ImageRecord(
        guild_id=guild_id,
        channel_id=channel_id,
        message_id=1,
        image_key=1,
        kind="attachment",
        author_id=author_id,
        posted_at=datetime(2025, 1, 1, tzinfo=UTC),
        filename="old.png",
        source_url="https://cdn.example/old.png",
        content_type="image/png",
        content_hash="old",
        model_id=MULTILINGUAL_ID,
        embedding=vector,
    )


async def test_help_and_every_description_explain_the_commands(tmp_path):
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Help")
        general = guild.add_text_channel("general")
        mo = guild.add_member("mo")  # no special permission: help is for everyone
        async with running_bot(bot_settings(fd, tmp_path), fd):
            asked = await fd.invoke_slash(guild, general, mo, ("clipfind", "help"))
            reply = await asked.wait_reply()
    assert reply["content"] == help_text() and reply["flags"] & 64
    for needed in ("/find", "channel:", "after:", "7d", "sort:", "image:", "Find similar images"):
        assert needed in reply["content"]

    def undescribed(options, where):
        for option in options:
            # discord.py sends "…" for a parameter its docstring parser did not find.
            if option.get("description", "…") == "…":
                yield f"{where} {option['name']}"
            yield from undescribed(option.get("options", []), f"{where} {option['name']}")

    slash = [c for c in fd.synced_commands[None] if c.get("type", 1) == 1]
    missing = [f"/{c['name']}" for c in slash if not c.get("description")]
    missing += [m for c in slash for m in undescribed(c.get("options", []), f"/{c['name']}")]
    assert not missing

    def invoked(command, prefix):
        # Options of type 1 and 2 are subcommands and groups: what a member types is their path.
        name = f"{prefix}{command['name']}"
        subs = [o for o in command.get("options", []) if o.get("type") in (1, 2)]
        if not subs:
            yield name
        for sub in subs:
            yield from invoked(sub, f"{name} ")

    registered = {name for c in slash for name in invoked(c, "/")}
    registered |= {c["name"] for c in fd.synced_commands[None] if c.get("type") == 3}
    assert registered == {entry.command for entry in COMMANDS}, "bot/help.py lists other commands"
