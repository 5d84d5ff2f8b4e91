"""Deletions both stores share. Each one also deletes the queued jobs it covers, in the same
transaction as the vectors, so nothing deleted is indexed afterwards, and the images it covers
that failed for good (`FailedImage`: ids only, but nothing of a deleted message stays).

Jobs go first: a consumer storing a vector deletes its job row first in its own transaction
(see the stores' ``upsert``), so on PostgreSQL whichever transaction reaches the job row second
waits for the other; a deletion that waits then sees the vector stored and deletes it too, and a
consumer that waits finds its job gone and stores nothing.

They stand on the store's `_delete` and `_delete_in` (see `VectorStore`).

Every deletion a member can cause names its server (``guild_id``): the bot always knows it, and
on a PostgreSQL distributed by guild (Citus) it sends the statement to the one machine holding
that server. A member's images in every server are deleted server by server, from the servers
listed for them in `author_guilds` (retrieval/store/authors.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.ext.asyncio import AsyncEngine

from retrieval.database.tables import IndexedImage, IndexJob
from retrieval.shards import Shards
from retrieval.store import authors
from retrieval.store.allowed import forbidden
from retrieval.store.base import VectorStore

Where = Callable[[type], list[ColumnElement[bool]]]


def routed(t, guild_id: int | None) -> list[ColumnElement[bool]]:
    """One server's rows of table ``t`` where the caller names it (see the module's notes)."""
    return [] if guild_id is None else [t.guild_id == guild_id]


class SharedDeletes(VectorStore):
    engine: AsyncEngine

    async def delete_messages(
        self, message_ids: Collection[int], *, guild_id: int | None = None
    ) -> int:
        return await self._delete_in("message_id", message_ids, guild_id=guild_id)

    async def delete_channels(
        self, channel_ids: Collection[int], *, guild_id: int | None = None
    ) -> int:
        return await self._delete_in("channel_id", channel_ids, guild_id=guild_id)

    async def delete_images(
        self, message_id: int, keep_keys: Collection[int], *, guild_id: int | None = None
    ) -> int:
        keep = [int(k) for k in keep_keys]
        return await self._delete(
            lambda t: [
                t.message_id == message_id,
                t.image_key.not_in(keep),
                *routed(t, guild_id),
            ]
        )

    async def delete_other_models(
        self,
        channel_id: int,
        model_id: str,
        *,
        since_message_id: int | None = None,
        guild_id: int | None = None,
    ) -> int:
        """A channel's rows of other models once its history was read again: those the re-read
        did not find. An image still queued for the new model keeps its old vector until the
        new one replaces it, and so does one older than ``since_message_id`` (before the
        backfill window: it was not read again, not found gone)."""
        # The channel's queued keys as a table of their own: Citus reads them from the
        # coordinator's queue first, and refuses the queue itself inside the correlated check.
        jobs = (
            select(IndexJob.message_id, IndexJob.image_key)
            .where(IndexJob.channel_id == channel_id, *routed(IndexJob, guild_id))
            .subquery()
        )
        queued = exists().where(
            jobs.c.message_id == IndexedImage.message_id,
            jobs.c.image_key == IndexedImage.image_key,
        )

        def where(t) -> list[ColumnElement[bool]]:
            conditions = [
                t.channel_id == channel_id,
                t.model_id != model_id,
                ~queued,
                *routed(t, guild_id),
            ]
            if since_message_id is not None:
                conditions.append(t.message_id >= since_message_id)
            return conditions

        # Jobs carry no model: they are for whichever model is configured.
        return await self._delete(where, jobs=False)

    async def delete_guild(self, guild_id: int) -> int:
        return await self._delete(
            lambda t: [t.guild_id == guild_id], also=[authors.forget(guild_id=guild_id)]
        )

    async def delete_author(self, *, guild_id: int | None, author_id: int) -> int:
        """A member's images in one server, or (None) in every server: server by server."""
        if guild_id is None:
            # The jobs table is one table on every deployment (local to Citus's coordinator):
            # one statement through its author index, servers with nothing stored yet included.
            await self._delete(lambda t: [t.author_id == author_id], images=False)
            guilds = await self.author_guild_ids(author_id)
        else:
            guilds = [guild_id]
        removed = 0
        for guild in guilds:
            removed += await self._delete(
                lambda t, guild=guild: [t.guild_id == guild, t.author_id == author_id],
                also=[authors.forget(guild_id=guild, author_id=author_id)],
            )
        return removed

    async def delete_forbidden(self, *, shards: Shards | None = None) -> int:
        shards = shards or Shards()
        removed = 0
        for condition in forbidden(arrays=self.engine.dialect.name == "postgresql"):
            removed += await self._delete(
                lambda t, condition=condition: [condition(t), shards.condition(t.guild_id)]
            )
        return removed
