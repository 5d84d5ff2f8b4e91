"""The channels the bot cannot index, so "why isn't #art indexed?" answers itself."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import discord

VIEW = "View Channel"
HISTORY = "Read Message History"


@dataclass(frozen=True, slots=True)
class Unreadable:
    channel: discord.abc.GuildChannel
    missing: str  # the permission to give the bot there

    def __str__(self) -> str:
        return f"{self.channel.mention} (no {self.missing})"


def unreadable_channels(guild: discord.Guild, *, skip: Collection[int] = ()) -> list[Unreadable]:
    """Channels where the bot lacks View Channel or Read Message History, in the server's
    order, leaving out those in ``skip`` (excluded on purpose, say)."""
    me = guild.me
    if me is None:
        return []
    found = []
    for channel in guild.channels:
        if isinstance(channel, discord.CategoryChannel) or channel.id in skip:
            continue
        perms = channel.permissions_for(me)
        # Without View Channel discord.py reports every other channel permission denied too.
        if not perms.view_channel:
            found.append(Unreadable(channel, VIEW))
        elif not perms.read_message_history:
            found.append(Unreadable(channel, HISTORY))
    return sorted(found, key=lambda u: (u.channel.position, u.channel.id))


def listed(
    unreadable: list[Unreadable], *, at_most: int, name: Callable[[Unreadable], str] = str
) -> str:
    """``a, b, c and 4 more``: a message holds 2,000 characters."""
    shown = ", ".join(name(u) for u in unreadable[:at_most])
    if len(unreadable) > at_most:
        shown += f" and {len(unreadable) - at_most} more"
    return shown
