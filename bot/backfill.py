"""Backfill: the images of messages posted before the bot joined, or while it was offline.

Every readable text, news, forum, voice and stage channel (the text chat of the last two), and
every thread in the first three (active and archived), is read in pages of 100; each message goes
through the same checks as a live one into the same pipeline, which skips images it already has.
Channels take turns of a few pages, so every channel's recent history is indexed before anyone's
distant past. A page's images are rows in the jobs table before the channel's cursor
(`retrieval/indexing/cursors.py`) moves past them: a restart re-reads at most a turn of each channel
and never skips a message.

Only the servers of this process's shards are read (`bot/ownership.py`): those are the servers
its gateway connection lists and sends events of, which is all this scheduler goes by. The bot
owns it (`bot.backfill`); the events that schedule a channel come through `bot/cogs/backfill.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import discord

from bot import refs as message_refs
from retrieval.indexing import (
    HISTORY,
    BackfillProgress,
    Cursor,
    ImageRef,
    snowflake_at,
)
from retrieval.supervisor import settle

if TYPE_CHECKING:
    from bot.client import ClipfindBot

log = logging.getLogger(__name__)

PAGE = 100  # Discord's largest history page
PAGES_PER_TURN = 5
# Backfill pauses while this many images wait in the jobs table (live posts are claimed first
# anyway; this only keeps years of history from piling up there at once).
_BACKLOG = 5000
_ROOM_POLL_S = 0.5

# Voice and stage channels have a text chat but no threads.
Vocal = discord.VoiceChannel | discord.StageChannel
Walkable = discord.TextChannel | Vocal | discord.Thread
Parent = discord.TextChannel | discord.ForumChannel | Vocal


class _Stop(Exception):
    """The walk of a channel ends early: it was excluded, can no longer be read, or the bot left."""


@dataclass(eq=False)
class _Walk:
    channel: Walkable
    cursor: Cursor | None = None
    caught_up: bool = False  # nothing newer than the cursor is left to read this session
    pages: int = 0
    scanned: int = 0
    submitted: int = 0


def _where(channel: discord.abc.GuildChannel | discord.Thread) -> str:
    return f"#{channel.name} ({channel.id}) in {channel.guild.name} ({channel.guild.id})"


class BackfillScheduler:
    def __init__(self, bot: ClipfindBot) -> None:
        self.bot = bot
        self.cursors = bot.cursors
        self.progress = BackfillProgress()
        self._parents: asyncio.Queue[Parent] = asyncio.Queue()
        self._walks: asyncio.Queue[_Walk] = asyncio.Queue()
        self._listing: set[int] = set()  # parents waiting for or in their thread listing
        self._walking: dict[int, _Walk] = {}  # channels waiting for or in a turn
        self._again: set[int] = set()  # asked for again during a turn: walk once more after
        self._seen: set[int] = set()
        self._done: set[int] = set()
        # Each server's share, for its own status: channel → server, and per-server counts.
        self._guild_of: dict[int, int] = {}
        self._scanned: Counter[int] = Counter()
        self._submitted: Counter[int] = Counter()
        self._skipped: Counter[int] = Counter()
        self._idle = asyncio.Event()  # cleared until the first pass is over
        self._since = time.monotonic()
        self._tasks: list[asyncio.Task] = []

    @property
    def started(self) -> bool:
        """Whether it runs in this process (BACKFILL=true, and the bot started it)."""
        return bool(self._tasks)

    async def start(self) -> None:
        if not self.bot.settings.backfill:
            log.info("history backfill is off (BACKFILL=false)")
            if self.bot.reindexing:
                log.warning("the model changed, but only BACKFILL=true re-indexes history")
            self._idle.set()
            return
        start = self.bot.supervisor.start
        self._tasks = [start("backfill-list", self._list_loop)]
        self._tasks += [
            start("backfill-walk", self._walk_loop)
            for _ in range(self.bot.settings.backfill_channels_at_once)
        ]
        if self.bot.is_ready():  # started in a running bot: on_ready has passed
            self.schedule_guilds(self.bot.guilds)

    async def stop(self) -> None:
        await settle(self._tasks)
        self._tasks.clear()
        self.progress.running = False

    @property
    def seen_channels(self) -> frozenset[int]:
        """Every channel and thread scheduled this session: each existed when listed."""
        return frozenset(self._seen)

    def progress_in(self, guild_id: int) -> BackfillProgress:
        """The counters of one server's channels only."""
        mine = {channel for channel, guild in self._guild_of.items() if guild == guild_id}
        return BackfillProgress(
            channels_total=len(mine & self._seen),
            channels_done=len(mine & self._done),
            messages_scanned=self._scanned[guild_id],
            images_submitted=self._submitted[guild_id],
            running=not mine.isdisjoint(self._listing | self._walking.keys()),
            messages_skipped=self._skipped[guild_id],
        )

    async def wait_idle(self) -> None:
        """Wait until every channel known so far was read and its images were processed."""
        await self._idle.wait()

    # -- what to read ---------------------------------------------------------------------

    def schedule_guild(self, guild: discord.Guild) -> None:
        self.schedule_guilds([guild])

    def schedule_channel(self, channel: Parent | discord.Thread) -> None:
        """Read a channel (with its threads) or a thread, e.g. once it became readable."""
        if not self._tasks:
            return
        if isinstance(channel, discord.Thread):
            self._add_walk(channel)
        else:
            self._add_parent(channel)
        self._check_idle()

    def schedule_guilds(self, guilds: list[discord.Guild]) -> None:
        if not self._tasks:
            return
        for guild in guilds:
            for parent in [
                *guild.text_channels,
                *guild.forums,
                *guild.voice_channels,
                *guild.stage_channels,
            ]:
                self._add_parent(parent)
        self._check_idle()

    def allowed(self, channel: Parent | discord.Thread) -> bool:
        return self._refusal(channel) is None

    def _refusal(self, channel: Parent | discord.Thread) -> str | None:
        """Why this channel may not be read now; None when it may."""
        me = channel.guild.me
        if self.bot.get_guild(channel.guild.id) is None or me is None:
            return "the bot left the server"
        policy = self.bot.policy
        parent_id = getattr(channel, "parent_id", None)
        if policy.is_excluded(channel.id) or (
            parent_id is not None and policy.is_excluded(parent_id)
        ):
            return "it is excluded from the index"
        try:
            perms = channel.permissions_for(me)
        except discord.ClientException:  # a thread whose parent is not cached
            return "its parent channel is unknown"
        if not (perms.view_channel and perms.read_message_history):
            return "the bot may not read its history"
        return None

    def _add_parent(self, parent: Parent) -> None:
        if parent.id in self._listing or not self.allowed(parent):
            return
        self._listing.add(parent.id)
        self._guild_of[parent.id] = parent.guild.id
        self._running()
        self._parents.put_nowait(parent)

    def _add_walk(self, channel: Walkable) -> None:
        if not self.allowed(channel):
            return
        if channel.id in self._walking:
            if self._walking[channel.id].cursor is not None:  # started: may be past catch-up
                self._again.add(channel.id)
            return
        walk = self._walking[channel.id] = _Walk(channel)
        self._seen.add(channel.id)
        self._guild_of[channel.id] = channel.guild.id
        self._done.discard(channel.id)
        self._running()
        self._count()
        self._walks.put_nowait(walk)

    async def _list_loop(self) -> None:
        while True:
            parent = await self._parents.get()
            try:
                await self._list(parent)
            except discord.HTTPException as exc:
                log.info("backfill: cannot list the threads of %s: %s", _where(parent), exc)
            except Exception:
                log.exception("backfill: listing the threads of %s failed", _where(parent))
            finally:
                self._listing.discard(parent.id)
                self._check_idle()

    async def _list(self, parent: Parent) -> None:
        if not self.allowed(parent):  # may have changed while it waited
            return
        if isinstance(parent, discord.TextChannel | Vocal):
            self._add_walk(parent)
        if isinstance(parent, Vocal):
            return
        for thread in parent.threads:
            self._add_walk(thread)
        async for thread in parent.archived_threads(limit=None):
            self._add_walk(thread)
        if isinstance(parent, discord.TextChannel) and not parent.is_news():
            # Without Manage Threads, Discord lists only the private threads the bot joined.
            manage = parent.permissions_for(parent.guild.me).manage_threads
            async for thread in parent.archived_threads(
                private=True, joined=not manage, limit=None
            ):
                self._add_walk(thread)

    # -- reading ----------------------------------------------------------------------------

    async def _walk_loop(self) -> None:
        while True:
            walk = await self._walks.get()
            channel = walk.channel
            finished = True
            try:
                # The pages read are in memory until queued: a deletion meanwhile waits for them.
                with self.bot.pipeline.arrivals.carrying():
                    finished = await self._turn(walk)
            except _Stop as exc:
                log.info("backfill: stopped reading %s: %s", _where(channel), exc)
            except discord.NotFound:
                log.info("backfill: %s was deleted; stopped reading it", _where(channel))
                await self.forget([channel.id])
            except discord.Forbidden:
                log.info("backfill: %s can no longer be read; stopped reading it", _where(channel))
            except discord.HTTPException as exc:
                log.warning(
                    "backfill: reading %s failed (%s); retried at the next start",
                    _where(channel),
                    exc,
                )
            except Exception:
                log.exception("backfill: reading %s failed", _where(channel))
            if finished:
                self._finish(walk)
            else:  # back of the line: every channel gets its turn
                self._walks.put_nowait(walk)

    async def _turn(self, walk: _Walk) -> bool:
        """Read up to PAGES_PER_TURN pages of one channel; True when nothing is left to read."""
        channel = walk.channel
        if walk.cursor is None:
            saved = await self.cursors.get(channel.id)
            walk.cursor = saved or Cursor(channel.id, channel.guild.id)
            walk.caught_up = not walk.cursor.wants_newer(channel.last_message_id)
        cursor, floor = walk.cursor, self._floor()
        for _ in range(PAGES_PER_TURN):
            if reason := self._refusal(channel):
                raise _Stop(reason)
            if not walk.caught_up:  # messages posted while the bot was offline come first
                page = await self._page(channel, after=cursor.newest_id or 0)
                walk.caught_up = len(page) < PAGE
                cursor = cursor.read_newer([m.id for m in page])
            elif cursor.wants_older(floor):
                page = await self._page(channel, before=cursor.oldest_id)
                if len(page) < PAGE and (reason := self._refusal(channel)):
                    # Without Read Message History Discord answers with an empty page; that
                    # is no proof of having reached the beginning.
                    raise _Stop(reason)
                ids = [m.id for m in page]
                cursor = cursor.read_older(ids, full=len(page) == PAGE, floor=floor)
            else:
                break
            walk.pages += 1
            walk.scanned += len(page)
            self.progress.messages_scanned += len(page)
            self._scanned[channel.guild.id] += len(page)
            # Queued durably before the cursor moves past them: a restart never skips one.
            await self._submit(walk, page, floor)
        if reason := self._refusal(channel):
            # E.g. the bot left and the server's index (with its cursors) is being purged.
            raise _Stop(reason)
        if cursor != walk.cursor:
            await self.cursors.save(cursor)
        walk.cursor = cursor
        finished = walk.caught_up and not cursor.wants_older(floor)
        if finished and self.bot.reindexing:
            # Whatever the walk re-encoded has its new vector; the rest of what it read is gone
            # from Discord. Images older than the age window were not read: they keep their old
            # vector rather than vanish, as they are still on Discord.
            await self.bot.store.delete_other_models(
                channel.id,
                self.bot.encoder.model_id,
                since_message_id=floor,
                guild_id=channel.guild.id,
            )
        if not finished:
            log.info(
                "backfill: %s: %d messages read, %d images submitted so far",
                _where(channel),
                walk.scanned,
                walk.submitted,
            )
        return finished

    async def _page(
        self, channel: Walkable, *, before: int | None = None, after: int | None = None
    ) -> list[discord.Message]:
        return [
            message
            async for message in channel.history(
                limit=PAGE,
                before=None if before is None else discord.Object(before),
                after=None if after is None else discord.Object(after),
            )
        ]

    async def _submit(self, walk: _Walk, page: list[discord.Message], floor: int | None) -> None:
        refs = [
            ref
            for message in page
            if floor is None or message.id >= floor
            for ref in self._images(walk, message)
        ]
        if not refs:
            return
        await self._room()
        await self.bot.pipeline.submit(refs, priority=HISTORY)
        walk.submitted += len(refs)
        self.progress.images_submitted += len(refs)
        self._submitted[walk.channel.guild.id] += len(refs)

    def _images(self, walk: _Walk, message: discord.Message) -> list[ImageRef]:
        """The message's images to index. One that cannot be read is skipped and counted: it
        must not stop its channel's walk before the cursor moves past it, at every start."""
        try:
            wanted = message_refs.wanted(self.bot, message)
            return message_refs.image_refs(message) if wanted else []
        except Exception as exc:
            self.progress.messages_skipped += 1
            self._skipped[walk.channel.guild.id] += 1
            log.warning(
                "backfill: skipped message %d in %s, which could not be read: %s: %s",
                message.id,
                _where(walk.channel),
                type(exc).__name__,
                exc,
            )
            return []

    async def _room(self) -> None:
        """Wait while the queue holds a large backlog: history can wait in Discord, and a
        bounded table keeps /clipfind status's figures meaningful."""
        # The table has no event for "below N waiting"; a poll per page is cheap beside it.
        while await self.bot.jobs.waiting(at_most=_BACKLOG) >= _BACKLOG:  # noqa: ASYNC110
            await asyncio.sleep(_ROOM_POLL_S)

    def _floor(self) -> int | None:
        days = self.bot.settings.backfill_max_age_days
        if days is None:
            return None
        return snowflake_at(datetime.now(UTC) - timedelta(days=days))

    # -- bookkeeping ------------------------------------------------------------------------

    def _running(self) -> None:
        if self._idle.is_set() or not self.progress.running:
            self._since = time.monotonic()
        self._idle.clear()
        self.progress.running = True

    def _count(self) -> None:
        self.progress.channels_total = len(self._seen)
        self.progress.channels_done = len(self._done)

    def _finish(self, walk: _Walk) -> None:
        channel = walk.channel
        self._walking.pop(channel.id, None)
        self._done.add(channel.id)
        self._count()
        if walk.scanned:
            cursor = walk.cursor
            how = "all history read" if cursor and cursor.complete else "caught up"
            log.info(
                "backfill: %s done (%s): %d messages read, %d images submitted",
                _where(channel),
                how,
                walk.scanned,
                walk.submitted,
            )
        if channel.id in self._again:
            self._again.discard(channel.id)
            self._add_walk(channel)
        self._check_idle()

    def _check_idle(self) -> None:
        if self._listing or self._walking or self._idle.is_set():
            return
        self._idle.set()
        self.progress.running = False
        if self._seen:
            p = self.progress
            log.info(
                "backfill: all %d channels done: %d messages read, %d images submitted in %.1fs",
                p.channels_done,
                p.messages_scanned,
                p.images_submitted,
                time.monotonic() - self._since,
            )

    async def forget(self, channel_ids: list[int]) -> None:
        try:
            await self.cursors.forget(channel_ids)
        except Exception:
            log.exception("backfill: could not drop the cursors of channels %s", channel_ids)
