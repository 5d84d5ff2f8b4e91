"""Search: `/find` answers with the images that best match a description."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.permissions import Access, asked_in_nsfw
from bot.render import results_message
from retrieval.search import ResultPager, from_store
from retrieval.store import SearchScope

if TYPE_CHECKING:
    from bot.client import ClipfindBot

log = logging.getLogger(__name__)

NOTHING_INDEXED = (
    "I haven't indexed any images in this server yet. Images posted from now on are indexed "
    "as they arrive; try again once a few have been posted."
)
NO_MATCH = "No images you can see in this server match that yet."


class Search(commands.Cog):
    def __init__(self, bot: ClipfindBot) -> None:
        self.bot = bot
        self.access = Access(bot, bot.store)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self.access.forget_message(payload.message_id)

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        for message_id in payload.message_ids:
            self.access.forget_message(message_id)

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        # A new gateway session: deletions during the gap were never heard of.
        self.access.forget_all()

    @app_commands.command(name="find")
    @app_commands.guild_only()
    async def find(
        self,
        interaction: discord.Interaction,
        query: app_commands.Range[str, 1, 300],
        count: app_commands.Range[int, 1, 10] | None = None,
        public: bool = False,
    ) -> None:
        """Search this server's images by describing them.

        Parameters
        ----------
        query: What the picture shows, e.g. "a cat asleep on a keyboard"
        count: How many images to show (1-10)
        public: Post the results in the channel instead of only to you
        """
        # Defer first: the text encode can wait behind an image batch, past Discord's 3 s.
        await interaction.response.defer(ephemeral=not public, thinking=True)
        query = query.strip()
        if not query:
            await interaction.followup.send("Tell me what to look for, e.g. `/find a red car`.")
            return
        guild, member = interaction.guild, interaction.user
        assert guild is not None and isinstance(member, discord.Member)
        seen = await self.access.visibility(
            guild, member, include_nsfw=asked_in_nsfw(interaction.channel)
        )
        scope = SearchScope(
            guild_id=guild.id, model_id=self.bot.encoder.model_id, channel_ids=seen.channel_ids
        )
        vector = await self.bot.encoder.encode_text(query)
        pager = ResultPager(
            fetch=from_store(self.bot.store, vector, scope),
            confirm=functools.partial(self.access.confirm, seen),
            page_size=count or self.bot.settings.find_default_count,
        )
        results = await pager.page(0)
        if not results:
            indexed = await self.bot.store.count(guild_id=guild.id, model_id=scope.model_id)
            await interaction.followup.send(NO_MATCH if indexed else NOTHING_INDEXED)
            return
        content, embeds = results_message(query, [group.hit for group in results])
        await interaction.followup.send(content, embeds=embeds)


async def setup(bot: ClipfindBot) -> None:
    await bot.add_cog(Search(bot))
