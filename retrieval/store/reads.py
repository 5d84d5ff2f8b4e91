"""What both stores read with the same SQL: hit rows and the small look-ups around them.

They stand on the store's `_reader()` (see `VectorStore`).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
from sqlalchemy import func, select

from retrieval.database.tables import IndexedImage
from retrieval.store import authors
from retrieval.store.base import SearchHit, VectorStore
from retrieval.store.deletes import routed

HIT_COLUMNS = (
    IndexedImage.id,
    IndexedImage.guild_id,
    IndexedImage.channel_id,
    IndexedImage.message_id,
    IndexedImage.image_key,
    IndexedImage.kind,
    IndexedImage.author_id,
    IndexedImage.posted_at,
    IndexedImage.filename,
    IndexedImage.source_url,
    IndexedImage.content_type,
    IndexedImage.content_hash,
)


# The fields of a SearchHit that HIT_COLUMNS hold under their own names (not the id).
_HIT_FIELDS = tuple(column.key for column in HIT_COLUMNS if column.key != "id")


def hit(row, score: float, *, says: str = "") -> SearchHit:
    """A row of HIT_COLUMNS as a result. By the columns' names, not `record`'s look-up of the
    record's fields in each row: a search makes hundreds of hits, and this takes under half
    the time (0.9 against 2.1 ms of CPU per 200)."""
    mapping = row._mapping
    values = {name: mapping[name] for name in _HIT_FIELDS}
    return SearchHit(row_id=mapping["id"], score=score, says=says, **values)


class SharedReads(VectorStore):
    async def _rows(self, stmt) -> list:
        async with self._reader() as conn:
            return (await conn.execute(stmt)).all()

    async def _scalar(self, stmt):
        async with self._reader() as conn:
            return (await conn.execute(stmt)).scalar_one_or_none()

    async def known_keys(
        self, message_id: int, model_id: str | None = None, *, guild_id: int | None = None
    ) -> set[int]:
        stmt = select(IndexedImage.image_key).where(
            IndexedImage.message_id == message_id, *in_guild(guild_id)
        )
        if model_id is not None:
            stmt = stmt.where(IndexedImage.model_id == model_id)
        return {row.image_key for row in await self._rows(stmt)}

    async def embedding_for(
        self, content_hash: str, model_id: str, *, guild_id: int | None = None
    ) -> np.ndarray | None:
        stmt = (
            select(IndexedImage.embedding)
            .where(
                IndexedImage.content_hash == content_hash,
                IndexedImage.model_id == model_id,
                *in_guild(guild_id),
            )
            .limit(1)
        )
        return await self._scalar(stmt)

    async def embeddings_for(
        self, content_hashes: Collection[str], model_id: str
    ) -> dict[str, np.ndarray]:
        if not content_hashes:
            return {}
        stmt = select(IndexedImage.content_hash, IndexedImage.embedding).where(
            IndexedImage.content_hash.in_(list(content_hashes)),
            IndexedImage.model_id == model_id,
        )
        return {row.content_hash: row.embedding for row in await self._rows(stmt)}

    async def message_vectors(
        self, message_id: int, model_id: str, *, guild_id: int | None = None
    ) -> dict[int, np.ndarray]:
        stmt = select(IndexedImage.image_key, IndexedImage.embedding).where(
            IndexedImage.message_id == message_id,
            IndexedImage.model_id == model_id,
            *in_guild(guild_id),
        )
        return {row.image_key: row.embedding for row in await self._rows(stmt)}

    async def model_counts(self, *, other_than: str | None = None) -> dict[str, int]:
        # Model by model through ix_images_model: the next model id above the last (a handful
        # of index probes), then a count of each model's entries. Leaving the configured model
        # out (``other_than``) leaves out nearly every row, where one GROUP BY would read them
        # all. Statements, not a recursive query: Citus runs these on every node, not that.
        models: list[str] = []
        while True:
            after = select(func.min(IndexedImage.model_id))
            if models:
                after = after.where(IndexedImage.model_id > models[-1])
            if (model := await self._scalar(after)) is None:
                break
            models.append(model)
        counts = {}
        for model in models:
            if model == other_than:
                continue
            stmt = select(func.count()).select_from(IndexedImage)
            counts[model] = int(await self._scalar(stmt.where(IndexedImage.model_id == model)))
        return counts

    async def count(
        self,
        *,
        guild_id: int,
        model_id: str | None = None,
        channel_ids: Collection[int] | None = None,
    ) -> int:
        stmt = (
            select(func.count()).select_from(IndexedImage).where(IndexedImage.guild_id == guild_id)
        )
        if model_id is not None:
            stmt = stmt.where(IndexedImage.model_id == model_id)
        if channel_ids is not None:
            stmt = stmt.where(IndexedImage.channel_id.in_(sorted(channel_ids)))
        return int(await self._scalar(stmt))

    async def author_guild_ids(self, author_id: int) -> list[int]:
        """The servers where ``author_id`` may have images stored (see authors.py)."""
        return sorted(row.guild_id for row in await self._rows(authors.guilds_of(author_id)))

    async def count_author(self, *, author_id: int, guild_id: int | None = None) -> int:
        return await self._count_of_author(author_id, guild_id)

    async def count_words(self, *, author_id: int, guild_id: int | None = None) -> int:
        # `<> ''` leaves out those not read (NULL) and those without words alike.
        return await self._count_of_author(author_id, guild_id, IndexedImage.words != "")

    async def _count_of_author(self, author_id: int, guild_id: int | None, *where) -> int:
        guilds = [guild_id] if guild_id is not None else await self.author_guild_ids(author_id)
        if not guilds:
            return 0
        # Only the member's servers, through (guild_id, author_id): on Citus, only their shards.
        stmt = (
            select(func.count())
            .select_from(IndexedImage)
            .where(IndexedImage.guild_id.in_(guilds), IndexedImage.author_id == author_id, *where)
        )
        return int(await self._scalar(stmt))

    async def channel_ids(self, *, guild_id: int) -> set[int]:
        stmt = select(IndexedImage.channel_id).where(IndexedImage.guild_id == guild_id).distinct()
        return {row.channel_id for row in await self._rows(stmt)}

    async def guild_ids(self) -> set[int]:
        return {row.guild_id for row in await self._rows(authors.every_guild())}


def in_guild(guild_id: int | None) -> list:
    """The condition that routes a statement to one server's rows, when the caller knows it:
    on Citus it decides which machine answers; elsewhere it is one more indexed column."""
    return routed(IndexedImage, guild_id)
