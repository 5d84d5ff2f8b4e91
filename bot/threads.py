"""Which stored channel ids are threads of which channel, or gone: archived threads included.

The index files a thread's images under the thread's own id. The client's cache knows active
threads only; for any other id that has stored images, Discord is asked. That is one request per
unknown id, paid when a channel is deleted or excluded, and once per start for the ids backfill's
listings did not name (see Lifecycle's sweep). Each image also records its thread's parent, which
the policy needs; where that is unknown (old rows, a message from a thread the cache lacks),
`parents` asks Discord too.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import discord

from bot.refs import parent_of

if TYPE_CHECKING:
    from bot.client import ClipfindBot

log = logging.getLogger(__name__)


@dataclass
class Survey:
    parent_of: dict[int, int] = field(default_factory=dict)  # thread id → its channel's id
    gone: set[int] = field(default_factory=set)  # Discord says these no longer exist

    def threads_of(self, channel_id: int) -> set[int]:
        return {thread for thread, parent in self.parent_of.items() if parent == channel_id}


async def survey(bot: ClipfindBot, guild: discord.Guild, *, exists: Collection[int] = ()) -> Survey:
    """``exists``: ids known to exist from elsewhere (backfill's thread listings), not asked."""
    found = Survey({thread.id: thread.parent_id for thread in guild.threads})
    known = found.parent_of.keys() | {channel.id for channel in guild.channels} | set(exists)
    for channel_id in await bot.store.channel_ids(guild_id=guild.id) - known:
        try:
            channel = await bot.fetch_channel(channel_id)
        except discord.NotFound:
            found.gone.add(channel_id)
        except (discord.HTTPException, discord.InvalidData) as exc:
            # Forbidden, typically: a private thread the bot was removed from. It may still
            # exist, so its images stay.
            log.debug("cannot tell what channel %s is: %s", channel_id, exc)
        else:
            if isinstance(channel, discord.Thread):
                found.parent_of[channel.id] = channel.parent_id
    return found


async def parents(
    bot: ClipfindBot, guild: discord.Guild, channel_ids: Collection[int]
) -> dict[int, int | None]:
    """What each channel is, from the cache or else from Discord: a thread's parent channel, or
    None for a channel that is no thread. Ids Discord does not answer for (deleted, out of the
    bot's sight, an outage) are left out: their images stay hidden until it does."""
    found: dict[int, int | None] = {}
    for channel_id in channel_ids:
        channel = await described(bot, guild, channel_id)
        if channel is not None:
            found[channel_id] = parent_of(channel)
    return found


async def described(
    bot: ClipfindBot, guild: discord.Guild, channel_id: int
) -> discord.abc.GuildChannel | discord.Thread | None:
    """The channel from the cache, or else as Discord describes it; None when it does not."""
    channel = guild.get_channel_or_thread(channel_id)
    if channel is not None:
        return channel
    try:
        fetched = await bot.fetch_channel(channel_id)
    except (discord.HTTPException, discord.InvalidData) as exc:
        log.debug("cannot tell what channel %s is: %s", channel_id, exc)
        return None
    return fetched if isinstance(fetched, discord.abc.GuildChannel | discord.Thread) else None
