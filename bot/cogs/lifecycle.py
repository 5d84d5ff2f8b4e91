"""Lifecycle: what is deleted on Discord is deleted from the index.

Messages (one, in bulk, or images edited out), channels with their threads, threads (also when
deleted while the bot was offline), and whole servers once the bot is removed (after
GUILD_PURGE_GRACE_HOURS). Raw events throughout, so
messages and threads the client never cached are handled too.

Servers are recorded as departed and purged only by the process running their shard
(`bot/ownership.py`): another process's servers are missing from this one's READY, and their
departures are that process's to act on.

A member leaving changes nothing: their images stay part of the channels' history, as their
messages do. (Discord would not even say so: member events need the privileged GUILD_MEMBERS
intent, which clipfind does not ask for.) An opted-out member has nothing left to remove, since
the opt-out erased their images in every server.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.ownership import ownership
from bot.refs import image_refs
from bot.threads import parents, survey
from retrieval.database import database_now, get_state, set_state
from retrieval.errors import StoreUnavailable
from retrieval.policy import Departures, ThreadParents
from retrieval.supervisor import settle

if TYPE_CHECKING:
    from bot.client import ClipfindBot

log = logging.getLogger(__name__)

_INDEX_OWNER = "index_application_id"
PURGE_MINUTES = 5


class _Shown:
    """The image keys a message shows by its latest edit, shared by the deletions its edits
    started: one that runs late (after an outage, or again once images on their way landed)
    keeps what a later edit added. Lives as long as one of them may still run."""

    __slots__ = ("keys", "__weakref__")

    def __init__(self) -> None:
        self.keys: frozenset[int] = frozenset()


class Lifecycle(commands.Cog):
    def __init__(self, bot: ClipfindBot) -> None:
        self.bot = bot
        self.departures = Departures(bot.engine)
        self.thread_parents = ThreadParents(bot.engine)
        self._purging = asyncio.Lock()
        # A mass clean-up deletes channels by the dozen; one survey at a time per guild, each
        # finding less left to ask about.
        self._surveys: dict[int, asyncio.Lock] = {}
        self._shown: weakref.WeakValueDictionary[int, _Shown] = weakref.WeakValueDictionary()
        self._sweeper: asyncio.Task | None = None
        self._purger: asyncio.Task | None = None
        # on_ready's work, which discord.py runs in tasks of its own: a stop cancels and awaits
        # it before the database is closed (a query left running would hold a connection).
        self._on_ready: set[asyncio.Task] = set()

    async def cog_load(self) -> None:
        self._purger = self.bot.supervisor.start("lifecycle-purge", self._purge_loop)

    async def cog_unload(self) -> None:
        tasks = (self._purger, self._sweeper)
        await settle([*self._on_ready, *(task for task in tasks if task is not None)])

    # -- messages ------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        if payload.guild_id is None:
            return
        await self.bot.eraser.erase_patiently(
            lambda: self.bot.store.delete_messages([payload.message_id], guild_id=payload.guild_id),
            what=f"message {payload.message_id}",
        )

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        if payload.guild_id is None:
            return
        ids = set(payload.message_ids)
        await self.bot.eraser.erase_patiently(
            lambda: self.bot.store.delete_messages(ids, guild_id=payload.guild_id),
            what=f"{len(ids)} messages in channel {payload.channel_id}",
        )

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        message = payload.message
        # Discord sends the whole message on edits; an update without both lists (the older
        # partial form) cannot tell what was removed.
        if message.guild is None or not {"attachments", "embeds"} <= payload.data.keys():
            return
        shown = self._shown.setdefault(message.id, _Shown())
        shown.keys = frozenset(ref.image_key for ref in image_refs(message))
        guild_id = message.guild.id
        # Discord says this once: an outage is waited out, as for a deleted message.
        removed = await self.bot.eraser.erase_patiently(
            lambda: self.bot.store.delete_images(message.id, shown.keys, guild_id=guild_id),
            what=f"the images edited out of message {message.id}",
        )
        if removed:
            log.info("message %s was edited: %d of its images removed", message.id, removed)

    # -- channels and threads -------------------------------------------------------------

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        if isinstance(channel, discord.CategoryChannel):
            return  # nothing is posted in a category itself; its channels are deleted one by one
        # Cached threads of the channel arrive as thread deletes of their own (discord.py sends
        # them); archived threads the cache never held are found by the survey.
        guild_id = channel.guild.id
        await self._forget_channels({channel.id}, guild_id=guild_id, what=f"channel {channel.id}")
        async with self._surveys.setdefault(channel.guild.id, asyncio.Lock()):
            found = await survey(self.bot, channel.guild)
        orphans = found.threads_of(channel.id) | found.gone
        if orphans:
            what = f"{len(orphans)} threads or channels gone with {channel.id}"
            await self._forget_channels(orphans, guild_id=guild_id, what=what)

    @commands.Cog.listener()
    async def on_raw_thread_delete(self, payload: discord.RawThreadDeleteEvent) -> None:
        await self._forget_channels(
            {payload.thread_id}, guild_id=payload.guild_id, what=f"thread {payload.thread_id}"
        )

    async def _forget_channels(self, channel_ids: set[int], *, guild_id: int, what: str) -> None:
        removed = await self.bot.eraser.erase_patiently(
            lambda: self.bot.store.delete_channels(channel_ids, guild_id=guild_id), what=what
        )
        for channel_id in channel_ids:
            if self.bot.policy.is_excluded(channel_id):  # keep /clipfind channels list current
                await self.bot.policy.include_channel(channel_id)
        if removed:
            log.info("%s deleted on Discord: %d images removed from the index", what, removed)

    # -- the bot leaving and coming back ------------------------------------------------------

    @commands.Cog.listener()
    async def on_guild_remove(self, guild: discord.Guild) -> None:
        await self.departures.record(guild.id)
        grace = self.bot.settings.guild_purge_grace_hours
        log.info("removed from guild %s (%s); its index is purged in %g h", guild.id, guild, grace)
        await self.purge_due()

    @commands.Cog.listener()
    async def on_guild_join(self, guild: discord.Guild) -> None:
        if await self.departures.cancel(guild.id):
            log.info("back in guild %s (%s) within the grace period; index kept", guild.id, guild)

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        task = asyncio.create_task(self._after_ready(), name="lifecycle-ready")
        self._on_ready.add(task)
        task.add_done_callback(self._on_ready.discard)
        await task

    async def _after_ready(self) -> None:
        # Servers that removed the bot while it was offline never send an event: they are
        # simply missing from READY, which lists every server of this process's shards. The
        # stored servers of other shards are missing too, and are not this process's to judge.
        if await self._index_is_ours():
            # Locked: a purge finishing between the listing and the record would leave a
            # second departure behind.
            async with self._purging:
                shards = ownership(self.bot)
                present = {guild.id for guild in self.bot.guilds}
                pending = await self.departures.pending()
                stored = await self.bot.store.guild_ids()
                for guild_id in stored - present - pending.keys():
                    if not shards.owns(guild_id):
                        continue
                    log.info("guild %s removed the bot while it was offline", guild_id)
                    await self.departures.record(guild_id)
        await self.purge_due()
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = self.bot.supervisor.start("lifecycle-sweep", self._sweep)

    async def _sweep(self) -> None:
        """Channels and threads deleted while the bot was offline sent no event: find them.

        After backfill's first pass, whose listings name every thread that still exists, so
        Discord is asked only about the ids nothing else accounts for. Before it, the threads
        whose parent the index does not know are asked about: their images are hidden until then.
        """
        try:
            await self._learn_parents()
        except Exception:
            log.exception("could not look up the channels of threads stored without one")
        await self.bot.backfill.wait_idle()
        exists = self.bot.backfill.seen_channels
        guilds = list(self.bot.guilds)  # the servers of this process's shards
        checked = len(guilds)
        for guild in guilds:
            try:
                async with self._surveys.setdefault(guild.id, asyncio.Lock()):
                    found = await survey(self.bot, guild, exists=exists)
                if found.gone:
                    what = f"{len(found.gone)} channels or threads of {guild.id} (while offline)"
                    await self._forget_channels(found.gone, guild_id=guild.id, what=what)
                    await self.bot.cursors.forget(found.gone)
            except Exception:
                log.exception(
                    "could not check guild %s for channels deleted while offline", guild.id
                )
        log.info("checked %d servers for channels and threads deleted while offline", checked)

    async def _learn_parents(self) -> None:
        """Record the parent of each thread stored without one (this process's servers), then
        sweep what an exclusion of the parent covers."""
        shards = ownership(self.bot)
        unknown = await self.thread_parents.unknown(shards=shards)
        learnt = 0
        for guild_id, channel_ids in unknown.items():
            if (guild := self.bot.get_guild(guild_id)) is None:
                continue  # a server the bot left: purged after its grace period
            found = await parents(self.bot, guild, channel_ids)
            learnt += await self.thread_parents.record(found, guild_id=guild_id)
            if missing := len(channel_ids) - len(found):
                log.warning(
                    "Discord did not say which channel %d threads of guild %s belong to: their "
                    "images stay hidden until it does (asked again at the next start)",
                    missing,
                    guild_id,
                )
        if learnt:
            removed = await self.bot.store.delete_forbidden(shards=shards)
            log.info(
                "recorded the channel of %d images' threads; then swept %d images the policy "
                "forbids (those of excluded channels among them)",
                learnt,
                removed,
            )

    async def _index_is_ours(self) -> bool:
        """A database first filled by another application (a staging token pointed at the
        production database, say) is not purged for missing from this one's READY."""
        owner = await get_state(self.bot.engine, _INDEX_OWNER)
        mine = str(self.bot.application_id)
        if owner is None:
            await set_state(self.bot.engine, _INDEX_OWNER, mine)
        elif owner != mine:
            log.warning(
                "this database was filled by application %s, not %s: servers missing from READY "
                "are not purged",
                owner,
                mine,
            )
            return False
        return True

    async def _purge_loop(self) -> None:
        await self.bot.wait_until_ready()
        while True:
            try:
                await self.purge_due()
            except StoreUnavailable as exc:  # the next round tries again
                log.warning("could not purge the index of departed guilds: %s", exc)
            await asyncio.sleep(PURGE_MINUTES * 60)

    async def purge_due(self, *, now: datetime | None = None) -> list[int]:
        """Purge the index of every server of this process's shards left more than the grace
        period ago (before ``now``, by default the database's clock, the one departures are
        written with); cancel the departures of servers the bot is back in. Returns the purged."""
        now = now or await database_now(self.bot.engine)
        grace = timedelta(hours=self.bot.settings.guild_purge_grace_hours)
        purged = []
        async with self._purging:
            shards = ownership(self.bot)
            for guild_id, left_at in (await self.departures.pending()).items():
                if not shards.owns(guild_id):
                    continue  # whether it came back is known to the process running its shard
                if self.bot.get_guild(guild_id) is not None:  # re-added while we were down
                    await self.departures.cancel(guild_id)
                elif left_at + grace <= now:
                    await self._purge(guild_id, left_at)
                    purged.append(guild_id)
        return purged

    async def _purge(self, guild_id: int, left_at: datetime) -> None:
        removed = await self.bot.eraser.erase(
            lambda: self.bot.store.delete_guild(guild_id),
            what=f"guild {guild_id}",
            still=lambda: self.bot.get_guild(guild_id) is None,
        )
        await self.departures.purged(guild_id)
        log.info("purged the index of guild %s (left %s): %d images", guild_id, left_at, removed)


async def setup(bot: ClipfindBot) -> None:
    await bot.add_cog(Lifecycle(bot))
