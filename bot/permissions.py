"""Which channels a member may search, computed from their roles and overwrites right now."""

from __future__ import annotations

import itertools

import discord


def can_read(channel: discord.abc.GuildChannel | discord.Thread, member: discord.Member) -> bool:
    perms = channel.permissions_for(member)
    if not (perms.view_channel and perms.read_message_history):
        return False
    if isinstance(channel, discord.Thread) and channel.is_private():
        return perms.manage_threads or channel.get_member(member.id) is not None
    return True


def searchable_channels(
    guild: discord.Guild, member: discord.Member, *, include_nsfw: bool
) -> frozenset[int]:
    """Ids of the channels and threads whose images ``member`` may see in results.

    Channels the bot does not know (deleted, or threads it has not seen) are left out: when in
    doubt, hide.
    """
    allowed = set()
    for channel in itertools.chain(guild.channels, guild.threads):
        if isinstance(channel, discord.CategoryChannel):
            continue
        if channel.is_nsfw() and not include_nsfw:
            continue
        if can_read(channel, member):
            allowed.add(channel.id)
    return frozenset(allowed)
