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

from sqlalchemy.ext.asyncio import AsyncEngine

from retrieval.backfill import BackfillCursors
from retrieval.state import get_state, set_state
from retrieval.store.base import VectorStore

log = logging.getLogger(__name__)

INDEX_MODEL_KEY = "index_model"


async def adopt_model(engine: AsyncEngine, store: VectorStore, model_id: str) -> dict[str, int]:
    """Record the model the index is built with; on a switch, start every channel's walk again.

    Returns the row count of every other model still in the index (empty: nothing to re-index).
    A restart in the middle of a re-index does not start it over: the recorded model is already
    the current one, and the cursors saved since then hold.
    """
    others = {m: n for m, n in (await store.model_counts()).items() if m != model_id}
    previous = await get_state(engine, INDEX_MODEL_KEY)
    if others:
        listed = ", ".join(f"{n} from {model}" for model, n in sorted(others.items()))
        if previous != model_id:
            await BackfillCursors(engine).forget_all()
            log.warning(
                "model switched to %s: re-indexing %d images (%s); history is read again and "
                "each channel's old vectors go once it is done",
                model_id,
                sum(others.values()),
                listed,
            )
        else:
            log.info("re-indexing with %s continues: %s left", model_id, listed)
    if previous != model_id:
        await set_state(engine, INDEX_MODEL_KEY, model_id)
    return others
