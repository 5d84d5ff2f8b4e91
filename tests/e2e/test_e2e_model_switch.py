"""A model switch while a worker still runs the old model (PostgreSQL): the worker notices the
switch only now and then, and whatever it encodes meanwhile would be stored under the old model,
then deleted as stale by the channel's clean-up. Instead it stores nothing and hands the images
back: after the walk every image still on Discord is found with the new model."""

from __future__ import annotations

import logging

from sqlalchemy import func, select

from retrieval.database.tables import IndexJob
from retrieval.runtime.services import open_services
from tests.e2e.test_e2e_search_models import same_weights_other_file
from tests.fakediscord import FakeDiscord
from tests.helpers import (
    backfilled,
    bot_settings,
    eventually,
    find,
    picture,
    result_ids,
    running_bot,
)

PICTURES = [
    ("red", "circle"),
    ("blue", "square"),
    ("green", "star"),
    ("yellow", "triangle"),
    ("purple", "cross"),
    ("orange", "star"),
]


async def test_a_worker_left_on_the_old_model_loses_no_image_in_a_switch(
    postgres_engine, tmp_path, caplog
):
    url = postgres_engine.url.render_as_string(hide_password=False)
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Switching")
        general = guild.add_text_channel("general")
        lena = guild.add_member("lena")
        posts = [
            fd.add_history_message(general, lena, "", attachments=[picture(c, s, i)])
            for i, (c, s) in enumerate(PICTURES)
        ]
        old = bot_settings(fd, tmp_path, database_url=url)
        async with running_bot(old, fd) as bot:
            await backfilled(bot)
            old_model = bot.encoder.model_id
            assert await bot.store.model_counts() == {old_model: len(posts)}
        await fd.delete_message(posts[-1], dispatch=False)  # gone while the bot was down
        on_discord = posts[:-1]

        new = bot_settings(
            fd,
            tmp_path,
            database_url=url,
            clip_pretrained=str(same_weights_other_file(tmp_path)),
            encode_images=False,  # the workers encode
        )
        caplog.set_level(logging.ERROR, logger="retrieval.indexing.pipeline")
        # A worker on the old model, still running as the bot restarts with the new one.
        async with open_services(old, engine=postgres_engine) as stale:
            async with running_bot(new, fd) as bot:
                new_model = bot.encoder.model_id
                assert new_model != old_model and bot.reindexing == {old_model: len(posts)}
                # The walk queues every image again and ends (its clean-up ran); the old worker
                # is the only consumer and takes them.
                await bot.backfill.wait_idle()
                await eventually(lambda: _done_with(stale.pipeline, caplog), within=60)

                async with open_services(new, engine=postgres_engine):  # a worker on the new one
                    await backfilled(bot)
                assert await bot.store.model_counts() == {new_model: len(on_discord)}
                for post, (colour, shape) in zip(on_discord, PICTURES, strict=False):
                    reply = await find(fd, guild, general, lena, f"a {colour} {shape}", count=2)
                    assert post.id in result_ids(reply), (colour, shape)
            assert stale.pipeline.counters.indexed == 0
    assert f"the index is now built with the model {new_model}" in caplog.text


async def _done_with(pipeline, caplog) -> bool:
    """The old worker holds nothing, and either handed the images back or stored them all."""
    if pipeline.queued:
        return False
    if "handed back" in caplog.text:
        return True
    async with pipeline.jobs.engine.connect() as conn:
        return not await conn.scalar(select(func.count()).select_from(IndexJob))
