"""Threads whose parent channel the index does not know, and recording it once Discord says.

Images stored before revision 0003 carry no ``parent_id``, and revision 0012 could not tell
every such channel from a thread: those rows hold UNKNOWN_PARENT, so the policy hides and refuses
them (retrieval/store/allowed.py), and their queued jobs wait. The bot asks Discord what each of
these channels is at start (bot/threads.py) and records the answer here, images and jobs alike;
the policy's sweep then deletes what an exclusion of the parent covers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from retrieval.database.errors import database_errors
from retrieval.database.tables import UNKNOWN_PARENT, IndexedImage, IndexJob
from retrieval.shards import Shards

TABLES = (IndexedImage, IndexJob)


class ThreadParents:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def unknown(self, *, shards: Shards | None = None) -> dict[int, set[int]]:
        """Channels whose parent is unknown, by guild (of ``shards``' servers where given):
        through each table's index of threads' rows, which holds only rows with a parent."""
        shards = shards or Shards()
        found: dict[int, set[int]] = defaultdict(set)
        with database_errors():
            async with self.engine.connect() as conn:
                for table in TABLES:
                    stmt = (
                        select(table.guild_id, table.channel_id)
                        .where(table.parent_id == UNKNOWN_PARENT, shards.condition(table.guild_id))
                        .distinct()
                    )
                    for guild_id, channel_id in await conn.execute(stmt):
                        found[guild_id].add(channel_id)
        return dict(found)

    async def record(self, parents: Mapping[int, int | None], *, guild_id: int) -> int:
        """Record each channel's parent (None: a channel that is no thread) on its rows whose
        parent was unknown; returns the images changed."""
        by_parent: dict[int | None, list[int]] = defaultdict(list)
        for channel_id, parent_id in parents.items():
            by_parent[parent_id].append(channel_id)
        changed = 0
        with database_errors():
            async with self.engine.begin() as conn:
                for parent_id, channel_ids in by_parent.items():
                    for table in TABLES:
                        stmt = (
                            update(table)
                            .where(
                                table.guild_id == guild_id,
                                table.channel_id.in_(channel_ids),
                                table.parent_id == UNKNOWN_PARENT,
                            )
                            .values(parent_id=parent_id)
                        )
                        done = await conn.execute(stmt)
                        changed += done.rowcount if table is IndexedImage else 0
        return changed
