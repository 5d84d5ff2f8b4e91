"""Every image in a thread knows its parent channel, or says that it does not.

Images stored before revision 0003, and those of a message from a thread the bot's cache did not
hold, have a NULL ``parent_id`` like the images of channels that are no threads: an exclusion of
the thread's channel then neither refused, hid nor swept them. For each channel with such rows:

- another row of the same channel names its parent: that parent is filled in;
- the channel is itself the parent of some thread: it is no thread, and NULL stays;
- otherwise it may be either: ``parent_id`` becomes 0
  (``retrieval.database.tables.UNKNOWN_PARENT``), which the policy treats as excluded (hidden,
  refused, its queued jobs waiting) until the bot asks Discord at its next start and records the
  answer (retrieval/policy/thread_parents.py).

Images and queued jobs alike. The statements name each row's guild (one machine of a database
distributed by it). The downgrade turns the unknown parents back into NULL.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNKNOWN_PARENT = 0  # retrieval.database.tables.UNKNOWN_PARENT, as of this revision
BATCH = 500  # channel ids per UPDATE


def _tables() -> list[sa.TableClause]:
    columns = ("guild_id", "channel_id", "parent_id")
    return [sa.table(name, *(sa.column(c) for c in columns)) for name in ("images", "index_jobs")]


def upgrade() -> None:
    bind = op.get_bind()
    tables = _tables()
    parent_of: dict[tuple[int, int], int] = {}  # (guild, thread) -> its channel
    for t in tables:
        known = sa.select(t.c.guild_id, t.c.channel_id, t.c.parent_id).where(
            t.c.parent_id.is_not(None)
        )
        for guild_id, channel_id, parent_id in bind.execute(known.distinct()):
            parent_of[(guild_id, channel_id)] = parent_id
    holding = {(guild_id, parent_id) for (guild_id, _), parent_id in parent_of.items()}
    for t in tables:
        bare = sa.select(t.c.guild_id, t.c.channel_id).where(t.c.parent_id.is_(None)).distinct()
        chosen: dict[tuple[int, int], list[int]] = defaultdict(list)  # (guild, parent) -> channels
        for guild_id, channel_id in bind.execute(bare):
            if (guild_id, channel_id) in holding:
                continue  # a channel with threads is no thread
            parent_id = parent_of.get((guild_id, channel_id), UNKNOWN_PARENT)
            chosen[(guild_id, parent_id)].append(channel_id)
        for (guild_id, parent_id), channel_ids in chosen.items():
            for start in range(0, len(channel_ids), BATCH):
                bind.execute(
                    sa.update(t)
                    .where(
                        t.c.guild_id == guild_id,
                        t.c.channel_id.in_(channel_ids[start : start + BATCH]),
                        t.c.parent_id.is_(None),
                    )
                    .values(parent_id=parent_id)
                )


def downgrade() -> None:
    for t in _tables():
        op.execute(sa.update(t).where(t.c.parent_id == UNKNOWN_PARENT).values(parent_id=sa.null()))
