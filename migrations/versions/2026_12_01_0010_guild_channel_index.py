"""The channel index leads with the guild: ``ix_images_guild_channel (guild_id, channel_id)``
replaces ``ix_images_channel (channel_id)``.

A `/find` filtered to one channel of a large server names both its guild and the channel. With
an index on the channel alone, PostgreSQL's planner takes the two conditions for independent
(it cannot know that a channel lies in one guild), expects the guild's index to cut the
channel's rows fivefold, and ANDs a bitmap of every row of the guild into the scan: at a million
images, one channel of the 200,000-image server took 69 ms, 36 of them building that bitmap; with
the guild first in the channel's index, 7.6 ms (benchmarks/RESULTS.md, "Many guilds"). Every
query on a channel's rows names its guild (a database distributed by guild needs that too), and
the policy sweep matches excluded channels by (guild, channel).

On PostgreSQL the new index is built with CREATE INDEX CONCURRENTLY and the old one dropped
CONCURRENTLY, outside the migration's transaction, so writes go on meanwhile; a build that failed
half-way leaves an INVALID index, which the next run drops and builds again. SQLite: plain
statements (its searches read in-memory matrices; the index serves deletions).

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _swap(*, build: str, columns: list[str], drop: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(build, "images", columns)
        op.drop_index(drop, table_name="images")
        return
    with op.get_context().autocommit_block():
        invalid = op.get_bind().scalar(
            sa.text(
                "SELECT NOT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(:name)"
            ),
            {"name": build},
        )
        if invalid:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {build}")
        op.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {build} ON images ({', '.join(columns)})"
        )
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {drop}")


def upgrade() -> None:
    _swap(
        build="ix_images_guild_channel",
        columns=["guild_id", "channel_id"],
        drop="ix_images_channel",
    )


def downgrade() -> None:
    _swap(build="ix_images_channel", columns=["channel_id"], drop="ix_images_guild_channel")
