"""The servers this process looks after when nobody asks: those of the shards it runs.

Several processes may share one database, each running some of the bot's gateway shards. Work a
user asks for (/find, an opt-out, /clipfind commands) is done by whichever process hears it; work
nobody asks for (noticing servers that removed the bot, purging them, sweeping, backfill) is done
for a server only by the process running its shard. Otherwise each process would take the servers
missing from its own gateway session for servers that removed the bot, and purge the others'.

Read from discord.py's own attributes each time, since an AutoShardedBot without a count learns
Discord's recommended one only as it connects.
"""

from __future__ import annotations

import discord

from retrieval.shards import Shards, shard_of


def ownership(client: discord.Client) -> Shards:
    """The shards ``client`` runs: all of them unless it was given a subset."""
    if isinstance(client, discord.AutoShardedClient):
        ids = client.shard_ids  # None: every shard of shard_count
    else:
        ids = None if client.shard_id is None else [client.shard_id]
    return Shards.of(count=client.shard_count, ids=ids)


__all__ = ["Shards", "ownership", "shard_of"]
