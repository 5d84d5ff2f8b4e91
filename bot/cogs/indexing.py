"""Indexing: every image posted (or unfurled into an embed) in a guild goes to the pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.refs import image_refs

if TYPE_CHECKING:
    from bot.client import ClipfindBot


def wanted(bot: ClipfindBot, message: discord.Message) -> bool:
    """May this message's images be indexed? Live messages and backfill ask the same question."""
    if message.guild is None:
        return False
    if message.author.id == (bot.user and bot.user.id):
        return False
    if message.author.bot and not bot.settings.index_bot_messages:
        return False
    return bot.policy.allows(
        channel_id=message.channel.id,
        author_id=message.author.id,
        parent_id=getattr(message.channel, "parent_id", None),
    )


class Indexing(commands.Cog):
    def __init__(self, bot: ClipfindBot) -> None:
        self.bot = bot

    def _wanted(self, message: discord.Message) -> bool:
        return wanted(self.bot, message)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if self._wanted(message) and (refs := image_refs(message)):
            await self.bot.pipeline.submit(refs)

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        # Discord unfurls a linked picture into an embed moments after the message is created,
        # in an update; already-indexed images are skipped by the pipeline.
        if self._wanted(payload.message) and (refs := image_refs(payload.message)):
            await self.bot.pipeline.submit(refs)


async def setup(bot: ClipfindBot) -> None:
    await bot.add_cog(Indexing(bot))
