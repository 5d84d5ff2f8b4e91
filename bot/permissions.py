"""Which results a member may see, decided when they ask and at every page turn, and never
trusted from the index.

Channel access comes from the member's roles and overwrites right now (discord.py's
``permissions_for``), on the guild as the client's cache holds it at that moment: after a new
gateway session discord.py builds new guild objects, and an old one never changes again. Two
things the cache cannot always tell are looked up over REST and remembered briefly: threads the
cache does not hold (archived threads leave it), and whether a member belongs to a private
thread (without the members intent the bot hears only of its own thread memberships). A private
thread is searched only once the member is confirmed to be in it, so neither results nor their
count say anything about threads they are not in. Each result is also confirmed to still exist
just before it is shown: a message deleted while the bot was offline, or an image (attachment
or link preview) edited out or hidden since, is dropped and its vectors deleted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import discord
from cachetools import TTLCache

from bot.audience import readable_by_all_readers, vocal
from bot.refs import image_keys, image_refs
from retrieval.store import SearchHit, VectorStore

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

# A thread's parent and privacy rarely change; a resolved (or unresolvable) thread is looked up
# again after this long. Membership can change any time, so it is kept much shorter.
THREAD_TTL_S = 600.0
MEMBERSHIP_TTL_S = 60.0
# A message seen alive is not fetched again for this long; deletions the bot hears of evict it.
ALIVE_TTL_S = 300.0
# Which channels hold images changes only as new channels get images.
INDEXED_TTL_S = 60.0
# REST look-ups of unknown threads per search; the rest are resolved by the next searches.
THREAD_LOOKUPS = 10
# Private threads whose membership is asked per round, and rounds per search: a round asks about
# the threads holding the best matches among those not yet asked, so threads the member is not
# in cannot crowd out, for long, those they are in.
MEMBERSHIP_LOOKUPS = 10
MEMBERSHIP_ROUNDS = 3
# Concurrent REST calls per bot for all of this: Discord rate-limits per route anyway.
REST_CONCURRENCY = 4


class Expiring(TTLCache[K, V]):
    """A small LRU map whose entries expire (cachetools' TTLCache on the monotonic clock);
    ``get`` gives None for missing or expired."""

    def __init__(self, ttl_s: float, size: int = 10_000) -> None:
        super().__init__(maxsize=size, ttl=ttl_s, timer=time.monotonic)

    def put(self, key: K, value: V) -> None:
        self[key] = value

    def drop(self, matching: Callable[[K], bool]) -> None:
        for key in [key for key in self if matching(key)]:
            self.pop(key, None)


def can_read(channel: discord.abc.GuildChannel | discord.Thread, member: discord.Member) -> bool:
    """From the member's roles and overwrites now: View Channel and Read Message History, and
    Connect for a voice or stage channel's text chat."""
    return readable(channel.permissions_for(member), voice=vocal(channel))


def readable(perms: discord.Permissions, *, voice: bool) -> bool:
    """Whether these permissions read a channel's messages (``voice``: a voice or stage
    channel's text chat, which Discord shows only to those who may also Connect)."""
    return perms.view_channel and perms.read_message_history and (perms.connect or not voice)


def needs_membership(channel: discord.abc.GuildChannel | discord.Thread, member: discord.Member):
    """Private threads are for their members, and for those who may manage threads."""
    return (
        isinstance(channel, discord.Thread)
        and channel.is_private()
        and not channel.permissions_for(member).manage_threads
        and all(joined.id != member.id for joined in channel.members)
    )


def asked_in_nsfw(channel: object) -> bool:
    """Age-restricted results only where the question was asked in an age-restricted channel."""
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw and is_nsfw())


@dataclass(frozen=True)
class Visibility:
    """What one member may see in one guild, as of the moment they asked or pressed."""

    guild_id: int
    member: discord.Member | discord.User
    # The channels and threads the member surely reads: all that may be searched.
    channel_ids: frozenset[int]
    # Private threads the member reads only if they are in them, not yet confirmed: none of
    # them is in channel_ids until `Access.admit` confirms the member is in it.
    unconfirmed_threads: Mapping[int, discord.Thread] = field(default_factory=dict)
    # Each channel's parent: a thread's channel, a channel's category.
    parents: Mapping[int, int] = field(default_factory=dict)

    def within(
        self, channel_id: int | None, among: Collection[int] | None = None
    ) -> frozenset[int]:
        """The channels of ``among`` (the readable ones by default) in ``channel_id``: itself,
        its threads, a category's channels; all of them for None."""
        channels = self.channel_ids if among is None else frozenset(among)

        def inside(candidate: int | None, depth: int = 0) -> bool:
            if candidate is None or depth > 2:
                return False
            return candidate == channel_id or inside(self.parents.get(candidate), depth + 1)

        return channels if channel_id is None else frozenset(c for c in channels if inside(c))

    def admitting(self, thread_ids: Collection[int]) -> Visibility:
        """With these unconfirmed threads confirmed readable."""
        admitted = frozenset(thread_ids) & self.unconfirmed_threads.keys()
        return replace(
            self,
            channel_ids=self.channel_ids | admitted,
            unconfirmed_threads={
                t: thread for t, thread in self.unconfirmed_threads.items() if t not in admitted
            },
        )


# Which of the given unconfirmed private threads hold matches worth confirming, best first.
Probe = Callable[[Visibility, frozenset[int]], Awaitable[Sequence[int]]]


class Access:
    """Decides visibility and confirms results; owns the short-lived REST answers it remembers."""

    def __init__(self, client: discord.Client, store: VectorStore) -> None:
        self.client = client
        self.store = store
        self._threads: Expiring[int, discord.Thread | bool] = Expiring(THREAD_TTL_S)
        self._members: Expiring[tuple[int, int], bool] = Expiring(MEMBERSHIP_TTL_S)
        # Per message seen alive: its images' keys, each with the URL of Discord's copy of a
        # link preview's picture as the message shows it (None for an attachment).
        self._alive: Expiring[int, Mapping[int, str | None]] = Expiring(ALIVE_TTL_S)
        self._indexed: Expiring[int, frozenset[int]] = Expiring(INDEXED_TTL_S, size=1000)
        self._rest = asyncio.Semaphore(REST_CONCURRENCY)

    def forget_message(self, message_id: int) -> None:
        self._alive.pop(message_id, None)

    def forget_all(self) -> None:
        """After a new gateway session, deletions may have been missed, and the threads looked
        up belong to guild objects discord.py no longer updates."""
        self._alive.clear()
        self._threads.clear()

    def forget_member(self, member_id: int) -> None:
        """Their thread memberships are asked again: they may have left a thread since."""
        self._members.drop(lambda key: key[1] == member_id)

    async def visibility(
        self,
        guild: discord.Guild,
        member: discord.Member,
        *,
        include_nsfw: bool,
        audience: discord.abc.GuildChannel | discord.Thread | None = None,
    ) -> Visibility:
        """What ``member`` may see; with ``audience``, only what everyone who can view that
        channel may see too (a public answer posted there)."""
        readable: list[discord.abc.GuildChannel | discord.Thread] = []
        cached = itertools.chain(guild.channels, guild.threads)
        for channel in itertools.chain(cached, await self._uncached_threads(guild)):
            if isinstance(channel, discord.CategoryChannel):
                continue
            if channel.is_nsfw() and not include_nsfw:
                continue
            try:
                if can_read(channel, member):
                    readable.append(channel)
            except discord.ClientException:  # a thread whose parent is not cached: hide
                continue
        if audience is not None:
            shared = readable_by_all_readers(audience, readable)
            readable = [channel for channel in readable if channel.id in shared]
        parents: dict[int, int] = {}
        for channel in readable:
            if parent_id := getattr(channel, "parent_id", getattr(channel, "category_id", None)):
                parents[channel.id] = parent_id
        unconfirmed = {c.id: c for c in readable if needs_membership(c, member)}
        sure = frozenset(c.id for c in readable if c.id not in unconfirmed)
        return Visibility(guild.id, member, sure, unconfirmed, parents)

    async def admit(self, seen: Visibility, probe: Probe) -> Visibility:
        """``seen`` with the unconfirmed private threads that hold matches (``probe`` says
        which) and that the member turns out to be in."""
        threads, member = seen.unconfirmed_threads, seen.member
        refused: set[int] = set()
        for _ in range(MEMBERSHIP_ROUNDS):
            unasked = frozenset(seen.unconfirmed_threads.keys() - refused)
            if not unasked:
                break
            holding = [t for t in await probe(seen, unasked) if t in unasked]
            asked = holding[:MEMBERSHIP_LOOKUPS]
            joined = await self._gather(asked, lambda t: self._is_member(threads[t], member))
            seen = seen.admitting([t for t in asked if joined[t]])
            refused.update(t for t in asked if not joined[t])
            if len(holding) <= len(asked) and all(joined.values()):
                break  # every thread holding a match is the member's: nothing crowds them out
        return seen

    async def _uncached_threads(self, guild: discord.Guild) -> list[discord.Thread]:
        """Threads with indexed images that the cache lacks, archived ones above all."""
        indexed = self._indexed.get(guild.id)
        if indexed is None:
            indexed = frozenset(await self.store.channel_ids(guild_id=guild.id))
            self._indexed.put(guild.id, indexed)
        found: list[discord.Thread] = []
        lookups: list[int] = []
        for channel_id in indexed:
            if guild.get_channel_or_thread(channel_id) is not None:
                continue
            known = self._threads.get(channel_id)
            # Only a thread built on this very guild object: one from before a new gateway
            # session would judge by the roles and overwrites of that time, forever.
            if isinstance(known, discord.Thread) and known.guild is guild:
                found.append(known)
            elif known is None or isinstance(known, discord.Thread):
                lookups.append(channel_id)
        fetched = await asyncio.gather(
            *(self._fetch_thread(guild, c) for c in lookups[:THREAD_LOOKUPS])
        )
        found += [thread for thread in fetched if thread is not None]
        return found

    async def _fetch_thread(self, guild: discord.Guild, channel_id: int) -> discord.Thread | None:
        try:
            async with self._rest:
                channel = await self.client.fetch_channel(channel_id)
        except discord.HTTPException as exc:
            # Deleted, or out of the bot's sight: hidden either way. Removing a deleted
            # channel's vectors is the lifecycle clean-up's job.
            log.debug("thread %s cannot be resolved (%s); its images stay hidden", channel_id, exc)
            self._threads.put(channel_id, False)
            return None
        if not isinstance(channel, discord.Thread) or channel.guild.id != guild.id:
            self._threads.put(channel_id, False)
            return None
        self._threads.put(channel_id, channel)
        return channel

    async def screen(self, seen: Visibility, hits: Sequence[SearchHit]) -> list[bool]:
        """For each hit, whether the member may see it (not whether it still exists): enough
        for the reposts a result counts and links, which are never shown themselves."""
        return [h.guild_id == seen.guild_id and h.channel_id in seen.channel_ids for h in hits]

    async def confirm(self, seen: Visibility, hits: Sequence[SearchHit]) -> list[bool]:
        """For each hit, whether it may be shown now; deletes what turns out to be gone."""
        allowed = await self.screen(seen, hits)
        readable = [h for h, ok in zip(hits, allowed, strict=True) if ok]
        cached = {m.id: m for m in self.client.cached_messages}
        where = {h.message_id: h.channel_id for h in readable}
        shown = await self._gather(
            where, lambda m: self._image_keys(m, where[m], seen.guild_id, cached.get(m))
        )
        verdicts = {}
        for hit in readable:
            verdicts[hit.row_id] = await self._still_there(hit, shown[hit.message_id])
        return [verdicts.get(h.row_id, False) for h in hits]

    @staticmethod
    async def _gather(keys: Iterable[K], look_up) -> dict[K, V]:
        keys = list(keys)
        return dict(zip(keys, await asyncio.gather(*(look_up(k) for k in keys)), strict=True))

    async def _is_member(self, thread: discord.Thread, member: discord.Member) -> bool:
        key = (thread.id, member.id)
        if (known := self._members.get(key)) is not None:
            return known
        try:
            async with self._rest:
                await thread.fetch_member(member.id)
            joined = True
        except discord.NotFound:
            joined = False
        except discord.HTTPException as exc:
            log.warning("cannot tell whether %s is in thread %s: %s", member.id, thread.id, exc)
            return False
        self._members.put(key, joined)
        return joined

    def picture(self, hit: SearchHit) -> str | None:
        """The URL to show a confirmed hit's image by. A link preview's picture is Discord's
        proxied copy as its message carried it when confirmed, never the linked site's own URL,
        whose picture the site may have changed since; None when that is not known."""
        if hit.kind != "embed":
            return hit.source_url
        shown = self._alive.get(hit.message_id)
        return shown.get(hit.image_key) if shown is not None else None

    def _seen(self, message: discord.Message) -> Mapping[int, str | None]:
        proxied = {ref.image_key: ref.url for ref in image_refs(message) if ref.kind == "embed"}
        shown = {key: proxied.get(key) for key in image_keys(message)}
        self._alive.put(message.id, shown)
        return shown

    async def _image_keys(
        self, message_id: int, channel_id: int, guild_id: int, cached: discord.Message | None
    ) -> Mapping[int, str | None] | None:
        """The message's image keys as they are now (see ``_alive``); None when it is gone or
        unreadable."""
        if cached is not None:  # the gateway removes deleted messages from the cache
            return self._seen(cached)
        if (known := self._alive.get(message_id)) is not None:
            return known
        channel = self.client.get_partial_messageable(channel_id, guild_id=guild_id)
        try:
            async with self._rest:
                message = await channel.fetch_message(message_id)
        except discord.NotFound:
            removed = await self.store.delete_messages([message_id], guild_id=guild_id)
            log.info("message %s is gone; removed its %d indexed images", message_id, removed)
            return None
        except discord.HTTPException as exc:
            log.warning("cannot confirm message %s, hiding it this time: %s", message_id, exc)
            return None
        return self._seen(message)

    async def _still_there(self, hit: SearchHit, keys: Mapping[int, str | None] | None) -> bool:
        if keys is None:
            return False
        if hit.image_key in keys:
            return True
        # Edited out, or its preview hidden, while the bot was away or the image in the pipeline.
        known = await self.store.known_keys(hit.message_id, guild_id=hit.guild_id)
        keep = known - {hit.image_key}
        await self.store.delete_images(hit.message_id, keep, guild_id=hit.guild_id)
        return False


class Viewpoint:
    """Whose eyes a paged answer is shown to: renewed at every page turn, since roles, channel
    overwrites and thread memberships can change while an answer stays open.

    Only ids are kept: each renewal judges by the guild the client's cache holds at that
    moment, never an object from the first answer (after a new gateway session discord.py
    builds new ones, and the old ones never change again).
    """

    def __init__(
        self,
        access: Access,
        *,
        guild_id: int,
        include_nsfw: bool,
        audience_id: int | None = None,
        probe: Probe | None = None,
    ) -> None:
        self.access = access
        self.guild_id = guild_id
        self.include_nsfw = include_nsfw
        # A public answer's channel, whose readers all read the answer; None for an ephemeral one.
        self.audience_id = audience_id
        self.probe = probe
        self.seen: Visibility | None = None

    async def renew(
        self, member: discord.Member | discord.User, *, where: object = None
    ) -> Visibility:
        """What ``member`` may see now. ``where`` is the channel object of the interaction
        asking, used for the audience when the cache lacks it (an archived thread, say)."""
        self.seen = await self._look(member, where)
        return self.seen

    async def _look(self, member: discord.Member | discord.User, where: object) -> Visibility:
        guild = self.access.client.get_guild(self.guild_id)
        if guild is None or not isinstance(member, discord.Member):
            # Left, unavailable, or a member whose roles are unknown: nothing can be judged.
            return Visibility(self.guild_id, member, frozenset())
        audience = None
        if self.audience_id is not None:
            audience = guild.get_channel_or_thread(self.audience_id)
            if audience is None and getattr(where, "id", None) == self.audience_id:
                audience = where
            if audience is None:  # the answer's readers are unknown: show them nothing
                return Visibility(self.guild_id, member, frozenset())
        self.access.forget_member(member.id)
        seen = await self.access.visibility(
            guild, member, include_nsfw=self.include_nsfw, audience=audience
        )
        if self.probe is not None and seen.unconfirmed_threads:
            seen = await self.access.admit(seen, self.probe)
        return seen

    async def confirm(self, hits: Sequence[SearchHit]) -> list[bool]:
        assert self.seen is not None, "renew() first"
        return await self.access.confirm(self.seen, hits)

    async def screen(self, hits: Sequence[SearchHit]) -> list[bool]:
        assert self.seen is not None, "renew() first"
        return await self.access.screen(self.seen, hits)
