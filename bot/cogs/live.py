"""Live indexing: every image posted (or unfurled into an embed) in a guild goes to the pipeline."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.permissions import Expiring
from bot.refs import image_refs, parent_of, wanted
from bot.threads import described
from retrieval.database import UNKNOWN_PARENT

if TYPE_CHECKING:
    from bot.client import ClipfindBot

log = logging.getLogger(__name__)

# A thread never moves to another channel: a parent looked up is kept this long (the size bounds
# the memory; an entry is only a saved request).
PARENT_TTL_S = 24 * 3600.0


class Live(commands.Cog):
    def __init__(self, bot: ClipfindBot) -> None:
        self.bot = bot
        # Threads the cache lacked, as Discord described them: only their parent is read.
        self._channels: Expiring[int, discord.abc.GuildChannel | discord.Thread] = Expiring(
            PARENT_TTL_S
        )

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        await self._index(message)

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        # Discord unfurls a linked picture into an embed moments after the message is created,
        # in an update; already-indexed images are skipped by the pipeline.
        await self._index(payload.message)

    async def _index(self, message: discord.Message) -> None:
        if message.guild is None or not (refs := image_refs(message)):
            return
        channel: object = message.channel
        if parent_of(channel) == UNKNOWN_PARENT:
            # A thread the cache does not hold: its channel decides whether it is excluded.
            channel = await self._resolved(message.guild, message.channel.id) or channel
            refs = image_refs(message, channel=channel)
        if wanted(self.bot, message, channel=channel):
            await self.bot.pipeline.submit(refs)

    async def _resolved(
        self, guild: discord.Guild, channel_id: int
    ) -> discord.abc.GuildChannel | discord.Thread | None:
        if (known := self._channels.get(channel_id)) is not None:
            return known
        channel = await described(self.bot, guild, channel_id)
        if channel is None:
            log.warning(
                "not indexing a message's images in channel %s of guild %s: Discord did not say "
                "which channel it is a thread of (the next backfill reads it again)",
                channel_id,
                guild.id,
            )
            return None
        self._channels.put(channel_id, channel)
        return channel


async def setup(bot: ClipfindBot) -> None:
    await bot.add_cog(Live(bot))
