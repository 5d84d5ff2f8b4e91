"""`/clipfind`: help and status for everyone; `channels` (Manage Server) takes channels out of
the index and back. At start, and on joining a server, a log line lists the channels the bot
cannot read there.

Add subcommands with ``@clipfind.command()`` (or subgroups with ``parent=clipfind``). Discord's
``default_permissions`` would cover the whole top-level command, hiding help from members, so
the settings commands check Manage Server themselves, at run time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.help import help_text
from bot.permissions import readable
from bot.sight import listed, unreadable_channels
from bot.status import status_text
from bot.threads import survey

if TYPE_CHECKING:
    from bot.client import ClipfindBot

log = logging.getLogger(__name__)

# Where images can be posted. Channels come from the cache; threads as Discord resolved them,
# since archived ones are not cached. Categories are left out: exclusion is per channel.
Indexable = (
    discord.TextChannel
    | discord.VoiceChannel
    | discord.StageChannel
    | discord.ForumChannel
    | app_commands.AppCommandThread
)

VOCAL = (discord.ChannelType.voice, discord.ChannelType.stage_voice)
# Said, and nothing changed, when a manager names a channel they cannot read themselves (typed
# as an id, Discord resolves one their channel list would not show): excluding it would tell
# them how many images it held, and erase them.
NOT_YOURS = (
    "You can't read {channel} yourself, so you can't change whether I index it. Ask a manager "
    "who can read it."
)
LIST_AT_MOST = 60  # mentions are ~22 characters; a message holds 2,000
LOGGED_AT_MOST = 50  # unreadable channels named per server in the start-up log line
NONE_EXCLUDED = "No channels are excluded: I index every channel and thread I can read."


class Admin(commands.Cog):
    # No default_permissions on the group: Discord would apply it to every subcommand and hide
    # help and status from members. Each settings command checks Manage Server itself.
    clipfind = app_commands.Group(
        name="clipfind",
        description="clipfind: help, indexing status and this server's settings",
        guild_only=True,
    )
    channels = app_commands.Group(
        name="channels", description="Choose which channels clipfind indexes", parent=clipfind
    )

    def __init__(self, bot: ClipfindBot) -> None:
        self.bot = bot
        self._reported = False

    @channels.command(name="exclude")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def exclude(self, interaction: discord.Interaction, channel: Indexable) -> None:
        """Stop indexing a channel (and its threads) and delete what was indexed there.

        Parameters
        ----------
        channel
            The channel or thread to take out of the index
        """
        guild = interaction.guild
        assert guild is not None  # guild_only
        # Finding archived threads may take a request each: answer Discord first.
        await interaction.response.defer(ephemeral=True, thinking=True)
        if not await self._reads(interaction, channel):
            await interaction.followup.send(NOT_YOURS.format(channel=channel.mention))
            return
        if self.bot.policy.is_excluded(channel.id):
            await interaction.followup.send(f"{channel.mention} is already excluded.")
            return
        await self.bot.policy.exclude_channel(
            guild_id=guild.id, channel_id=channel.id, by=interaction.user.id
        )
        doomed = {channel.id}
        if not isinstance(channel, app_commands.AppCommandThread):
            doomed |= (await survey(self.bot, guild)).threads_of(channel.id)
        # Its history was erased with it: an include reads it again from the start.
        await self.bot.cursors.forget(list(doomed))
        removed = await self.bot.eraser.erase(
            lambda: self.bot.store.delete_channels(doomed, guild_id=guild.id),
            what=f"excluded channel {channel.id}",
            still=lambda: self.bot.policy.is_excluded(channel.id),
        )
        await self.bot.confirm_saved()
        log.info(
            "user %s excluded channel %s in guild %s: %d images deleted",
            interaction.user.id,
            channel.id,
            guild.id,
            removed,
        )
        await interaction.followup.send(
            f"{channel.mention} is excluded: I won't index it or its threads any more, and "
            f"deleted {removed} indexed image{'' if removed == 1 else 's'} from them. "
            "`/clipfind channels include` indexes it again, history included."
        )

    @channels.command(name="include")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def include(self, interaction: discord.Interaction, channel: Indexable) -> None:
        """Index an excluded channel (and its threads) again, its history included.

        Parameters
        ----------
        channel
            The excluded channel or thread to index again
        """
        await interaction.response.defer(ephemeral=True, thinking=True)
        if not await self._reads(interaction, channel):
            await interaction.followup.send(NOT_YOURS.format(channel=channel.mention))
            return
        if not self.bot.policy.is_excluded(channel.id):
            await interaction.followup.send(
                f"{channel.mention} isn't excluded: I index it whenever I can read it."
            )
            return
        await self.bot.policy.include_channel(channel.id)
        await self.bot.confirm_saved()
        log.info("user %s included channel %s again", interaction.user.id, channel.id)
        resolved = interaction.guild and interaction.guild.get_channel_or_thread(channel.id)
        if resolved is not None:
            self.bot.backfill.schedule_channel(resolved)
        await interaction.followup.send(
            f"{channel.mention} is indexed again: new images as they are posted, and its history "
            "is being read again."
        )

    async def _reads(self, interaction: discord.Interaction, channel: Indexable) -> bool:
        """Whether the manager asking reads ``channel``: by the permissions Discord computed for
        them there (sent with the command, on the option as resolved), and for a private thread,
        as one of its members or one who may manage threads."""
        perms = interaction.namespace.channel.permissions
        if not readable(perms, voice=channel.type in VOCAL):
            return False
        if channel.type is not discord.ChannelType.private_thread or perms.manage_threads:
            return True
        try:
            await self.bot.http.get_thread_member(channel.id, interaction.user.id)
        except discord.NotFound:
            return False
        except discord.HTTPException as exc:
            log.warning(
                "cannot tell whether %s is in thread %s, refusing: %s",
                interaction.user.id,
                channel.id,
                exc,
            )
            return False
        return True

    @channels.command(name="list")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def list_excluded(self, interaction: discord.Interaction) -> None:
        """Show which channels clipfind doesn't index in this server."""
        guild = interaction.guild
        assert guild is not None  # guild_only
        excluded = sorted(self.bot.policy.excluded_in(guild.id))
        if not excluded:
            await interaction.response.send_message(NONE_EXCLUDED, ephemeral=True)
            return
        shown = ", ".join(f"<#{channel_id}>" for channel_id in excluded[:LIST_AT_MOST])
        if len(excluded) > LIST_AT_MOST:
            shown += f" and {len(excluded) - LIST_AT_MOST} more"
        await interaction.response.send_message(
            f"Not indexed here ({len(excluded)}): {shown}. Everything else I can read is.",
            ephemeral=True,
        )

    @clipfind.command(name="status")
    async def status(self, interaction: discord.Interaction) -> None:
        """What clipfind has indexed here and what it is doing now."""
        assert interaction.guild is not None  # guild_only
        # The first owner check asks Discord for the application's owner; answer in time.
        await interaction.response.defer(ephemeral=True, thinking=True)
        text = await status_text(
            self.bot,
            guild=interaction.guild,
            manager=interaction.permissions.manage_guild,
            owner=await self.bot.is_owner(interaction.user),
        )
        await interaction.followup.send(text)

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        if self._reported:  # on_ready comes again after a lost session; once is enough
            return
        self._reported = True
        for guild in self.bot.guilds:
            self._log_unreadable(guild)

    @commands.Cog.listener()
    async def on_guild_join(self, guild: discord.Guild) -> None:
        self._log_unreadable(guild)

    def _log_unreadable(self, guild: discord.Guild) -> None:
        unreadable = unreadable_channels(guild, skip=self.bot.policy.excluded_in(guild.id))
        if not unreadable:
            return
        names = listed(
            unreadable,
            at_most=LOGGED_AT_MOST,
            name=lambda u: f"#{u.channel.name} ({u.channel.id}): no {u.missing}",
        )
        log.info(
            "cannot index %d channels of %s (%s), lacking View Channel or Read Message "
            "History there: %s",
            len(unreadable),
            guild.name,
            guild.id,
            names,
        )

    @clipfind.command(name="help")
    async def help(self, interaction: discord.Interaction) -> None:
        """How to search: /find's options and Find similar images, with examples."""
        await interaction.response.send_message(help_text(), ephemeral=True)


async def setup(bot: ClipfindBot) -> None:
    await bot.add_cog(Admin(bot))
