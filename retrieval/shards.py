"""Which gateway shard a server belongs to, and the servers a set of shards covers.

Discord assigns every server to shard ``(guild_id >> 22) % shard_count``. A process running some
of the shards looks after those servers' unasked work (purges, sweeps, backfill) and leaves the
others to the processes that run their shards. Only the count and the ids in hand decide it:
nothing is stored per shard, so a new shard count needs no change to the data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, literal, true


def listed(ids: Iterable[int], count: int) -> str:
    """Shards as an operator reads them: "1, 3 of 4"."""
    return f"{', '.join(map(str, sorted(ids)))} of {count}"


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard Discord sends a server's events to (the top bits of its id: its creation time)."""
    return (guild_id >> 22) % shard_count


@dataclass(frozen=True, slots=True)
class Shards:
    """Shards ``ids`` of ``count``; ``count=None`` covers every server (one process for all)."""

    count: int | None = None
    ids: frozenset[int] = frozenset()

    @classmethod
    def of(cls, *, count: int | None, ids: Iterable[int] | None) -> Shards:
        """``ids=None`` (or all of them) and ``count=None`` mean every shard."""
        if not count or ids is None:
            return cls()
        chosen = frozenset(ids)
        if chosen >= set(range(count)):
            return cls()
        return cls(count=count, ids=chosen)

    @property
    def everything(self) -> bool:
        return self.count is None

    def owns(self, guild_id: int) -> bool:
        return self.count is None or shard_of(guild_id, self.count) in self.ids

    def condition(self, guild_id: ColumnElement[int]) -> ColumnElement[bool]:
        """``owns`` as SQL on a guild id column (both databases shift and take remainders)."""
        if self.count is None:
            return true()
        shard = guild_id.op(">>")(literal(22)) % literal(self.count)
        return shard.in_(sorted(self.ids))

    def __str__(self) -> str:
        if self.count is None:
            return "every shard"
        return f"shards {listed(self.ids, self.count)}"
