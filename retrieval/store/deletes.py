"""Deletions both stores share. Each one also deletes the queued jobs it covers, in the same
transaction as the vectors, so nothing deleted is indexed afterwards.

Jobs go first: a consumer storing a vector deletes its job row first in its own transaction
(see the stores' ``upsert``), so on PostgreSQL whichever transaction reaches the job row second
waits for the other; a deletion that waits then sees the vector stored and deletes it too, and a
consumer that waits finds its job gone and stores nothing.

A store gives `_delete(where, jobs=...)`, running ``where(table)`` (conditions on the images
table, or on the jobs table, which has the same id columns) in one transaction, and
`_delete_in(name, values)` for long id lists.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from sqlalchemy import ColumnElement, exists

from retrieval.models import IndexedImage, IndexJob
from retrieval.shards import Shards
from retrieval.store.allowed import forbidden

Where = Callable[[type], list[ColumnElement[bool]]]


class SharedDeletes:
    async def _delete(self, where: Where, *, jobs: bool = True) -> int:
        raise NotImplementedError

    async def _delete_in(self, name: str, values: Collection[int]) -> int:
        raise NotImplementedError

    async def delete_messages(self, message_ids: Collection[int]) -> int:
        return await self._delete_in("message_id", message_ids)

    async def delete_channels(self, channel_ids: Collection[int]) -> int:
        return await self._delete_in("channel_id", channel_ids)

    async def delete_images(self, message_id: int, keep_keys: Collection[int]) -> int:
        keep = [int(k) for k in keep_keys]
        return await self._delete(
            lambda t: [t.message_id == message_id, t.image_key.not_in(keep)]
        )

    async def delete_other_models(
        self, channel_id: int, model_id: str, *, since_message_id: int | None = None
    ) -> int:
        """A channel's rows of other models once its history was read again: those the re-read
        did not find. An image still queued for the new model keeps its old vector until the
        new one replaces it, and so does one older than ``since_message_id`` (before the
        backfill window: it was not read again, not found gone)."""
        queued = exists().where(
            IndexJob.message_id == IndexedImage.message_id,
            IndexJob.image_key == IndexedImage.image_key,
        )

        def where(t) -> list[ColumnElement[bool]]:
            conditions = [t.channel_id == channel_id, t.model_id != model_id, ~queued]
            if since_message_id is not None:
                conditions.append(t.message_id >= since_message_id)
            return conditions

        # Jobs carry no model: they are for whichever model is configured.
        return await self._delete(where, jobs=False)

    async def delete_guild(self, guild_id: int) -> int:
        return await self._delete(lambda t: [t.guild_id == guild_id])

    async def delete_author(self, *, guild_id: int | None, author_id: int) -> int:
        def where(t) -> list[ColumnElement[bool]]:
            conditions = [t.author_id == author_id]
            if guild_id is not None:
                conditions.append(t.guild_id == guild_id)
            return conditions

        return await self._delete(where)

    async def delete_forbidden(self, *, shards: Shards | None = None) -> int:
        shards = shards or Shards()
        removed = 0
        for condition in forbidden():
            removed += await self._delete(
                lambda t, condition=condition: [condition(t), shards.condition(t.guild_id)]
            )
        return removed
