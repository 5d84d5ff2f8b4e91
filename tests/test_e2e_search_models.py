"""Models and help: a multilingual model can be configured, vectors of another model are reported
and never searched, and `/clipfind help` plus every description explain the commands."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import numpy as np
import pytest

from bot.render import HELP
from retrieval.config import load_settings
from retrieval.db import create_engine, ensure_schema
from retrieval.encoder import Encoder
from retrieval.errors import ModelUnavailable
from retrieval.store import ImageRecord, open_store
from tests.e2e import bot_settings, running_bot, settled
from tests.fakediscord import FakeDiscord
from tests.search_helpers import find, picture, result_ids

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


async def test_vectors_of_another_model_are_reported_at_start_and_never_searched(tmp_path, caplog):
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

        caplog.set_level(logging.WARNING, logger="bot.cogs.search")
        async with running_bot(settings, fd) as bot:
            warned = [r.getMessage() for r in caplog.records if "another model" in r.getMessage()]
            assert len(warned) == 1
            assert f"1 from {MULTILINGUAL_ID}" in warned[0] and "fresh DATABASE_URL" in warned[0]

            posted = await fd.post_message(
                general, lena, "", attachments=[picture("green", "star", 1)]
            )
            await settled(bot, fd)
            reply = await find(fd, guild, general, lena, "a green star", count=10)
            assert result_ids(reply) == [posted.id]


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
    assert reply["content"] == HELP and reply["flags"] & 64
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
