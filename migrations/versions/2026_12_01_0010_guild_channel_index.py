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

PostgreSQL builds the new index and drops the old one CONCURRENTLY
(retrieval/database/online_ddl.py): writes go on meanwhile.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from retrieval.database.online_ddl import replace_index

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


GUILD_CHANNEL = ("ix_images_guild_channel", ["guild_id", "channel_id"])
CHANNEL = ("ix_images_channel", ["channel_id"])


def upgrade() -> None:
    replace_index(op, table="images", new=GUILD_CHANNEL, old=CHANNEL)


def downgrade() -> None:
    replace_index(op, table="images", new=CHANNEL, old=GUILD_CHANNEL)
