"""Switching models re-indexes what the index already held.

Vectors of another model are never searched, so after a switch every channel's history is read
again and each image's vector replaced in place (same row, new model). Rows of the old model that
the walk does not meet again, such as images of messages deleted meanwhile, go once their channel
has been read to the end, so no unsearchable copy of a deleted image stays behind. With an age
window (BACKFILL_MAX_AGE_DAYS) the walk ends at the window: older rows were not looked for, so
they keep their old vector rather than vanish while their images are still on Discord.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from retrieval.database.tables import BackfillCursor, BotState
from retrieval.store.allowed import INDEX_MODEL_KEY, MODEL_LOCK
from retrieval.store.base import VectorStore

log = logging.getLogger(__name__)


async def adopt_model(engine: AsyncEngine, store: VectorStore, model_id: str) -> dict[str, int]:
    """Record the model the index is built with; on a switch, start every channel's walk again.

    Returns the row count of every other model still in the index (empty: nothing to re-index).
    A restart in the middle of a re-index does not start it over: the recorded model is already
    the current one, and the cursors saved since then hold. Nor does another process starting
    with the same model, even at the same moment: the switch is recorded with the cursors' reset
    in one transaction, one process at a time, so the first to start makes it and the others
    find it made.
    """
    others = await store.model_counts(other_than=model_id)
    async with async_sessionmaker(engine).begin() as session:
        await _one_at_a_time(session)
        previous = await session.scalar(
            select(BotState.value).where(BotState.key == INDEX_MODEL_KEY)
        )
        switched = previous != model_id
        if switched:
            if others:
                await session.execute(delete(BackfillCursor))
            await session.merge(BotState(key=INDEX_MODEL_KEY, value=model_id))
    if others:
        listed = ", ".join(f"{n} from {model}" for model, n in sorted(others.items()))
        if switched:
            log.warning(
                "model switched to %s: re-indexing %d images (%s); history is read again and "
                "each channel's old vectors go once it is done",
                model_id,
                sum(others.values()),
                listed,
            )
        else:
            log.info("re-indexing with %s continues: %s left", model_id, listed)
    return others


async def _one_at_a_time(session: AsyncSession) -> None:
    """Until the transaction ends, other processes adopting a model wait, and so do writes of
    vectors, which check the model they store against it (retrieval/store/allowed.py). (SQLite
    has one process, and one writer at a time anyway.)"""
    if session.bind.dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"),
            {"name": MODEL_LOCK},
        )
