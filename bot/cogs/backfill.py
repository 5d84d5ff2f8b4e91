"""Backfill's events: what makes a server, channel or thread worth reading (again), handed to
the bot's backfill scheduler (`bot/backfill.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.backfill import Parent

if TYPE_CHECKING:
    from bot.client import ClipfindBot


class Backfill(commands.Cog):
    def __init__(self, bot: ClipfindBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        # Also after a reconnect that lost the session: events may have been missed.
        self.bot.backfill.schedule_guilds(self.bot.guilds)

    @commands.Cog.listener()
    async def on_guild_join(self, guild: discord.Guild) -> None:
        self.bot.backfill.schedule_guild(guild)

    @commands.Cog.listener()
    async def on_guild_available(self, guild: discord.Guild) -> None:
        if self.bot.is_ready():  # back after an outage; at start on_ready covers it
            self.bot.backfill.schedule_guild(guild)

    @commands.Cog.listener()
    async def on_guild_channel_create(self, channel: discord.abc.GuildChannel) -> None:
        if isinstance(channel, Parent):
            self.bot.backfill.schedule_channel(channel)

    @commands.Cog.listener()
    async def on_guild_channel_update(
        self, before: discord.abc.GuildChannel, after: discord.abc.GuildChannel
    ) -> None:
        if isinstance(after, Parent) and not self.bot.backfill.allowed(before):
            self.bot.backfill.schedule_channel(after)

    @commands.Cog.listener()
    async def on_thread_join(self, thread: discord.Thread) -> None:
        self.bot.backfill.schedule_channel(thread)

    @commands.Cog.listener()
    async def on_guild_role_update(self, before: discord.Role, after: discord.Role) -> None:
        me = after.guild.me
        if me is not None and after in me.roles and before.permissions != after.permissions:
            self.bot.backfill.schedule_guild(after.guild)

    @commands.Cog.listener()
    async def on_member_update(self, before: discord.Member, after: discord.Member) -> None:
        if after.id == (self.bot.user and self.bot.user.id) and before.roles != after.roles:
            self.bot.backfill.schedule_guild(after.guild)

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        await self.bot.backfill.forget([channel.id])

    @commands.Cog.listener()
    async def on_raw_thread_delete(self, payload: discord.RawThreadDeleteEvent) -> None:
        await self.bot.backfill.forget([payload.thread_id])


async def setup(bot: ClipfindBot) -> None:
    await bot.add_cog(Backfill(bot))
