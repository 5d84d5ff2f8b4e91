"""Policy upkeep: the opt-out and exclusion hint follows other processes' changes, and rows the
policy forbids are swept away at start and every few minutes; both as tasks of the process's
supervisor, which restarts them should they fail.

Such rows can only appear when two processes race an opt-out or an exclusion, or when a process
died between recording one and deleting what it covers; searches never show them meanwhile (the
database filters them), and the sweep, reading only the database, survives any restart.

Each process sweeps only the servers of its own shards (`bot/ownership.py`): the processes of a
cluster share the work instead of each repeating all of it, and never delete the same rows at the
same moment, so no sweep waits on another's row locks. Together they cover every server once every
shard runs. (A lock held by one sweeper would stop sweeps overlapping, but not each process
repeating the whole sweep after the other.)
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from discord.ext import commands

from bot.ownership import ownership
from retrieval.errors import StoreUnavailable
from retrieval.supervisor import settle

if TYPE_CHECKING:
    from bot.client import ClipfindBot

log = logging.getLogger(__name__)

SWEEP_MINUTES = 5


class Upkeep(commands.Cog):
    def __init__(self, bot: ClipfindBot) -> None:
        self.bot = bot
        self._tasks: list[asyncio.Task] = []

    async def cog_load(self) -> None:
        start = self.bot.supervisor.start
        self._tasks = [
            start("policy-watch", self.bot.policy.watch),
            start("policy-sweep", self._sweep_loop),
        ]

    async def cog_unload(self) -> None:
        await settle(self._tasks)

    async def _sweep_loop(self) -> None:
        while True:
            await self.sweep()
            await asyncio.sleep(SWEEP_MINUTES * 60)

    async def sweep(self) -> None:
        try:
            removed = await self.bot.store.delete_forbidden(shards=ownership(self.bot))
        except StoreUnavailable as exc:  # the next sweep tries again
            log.warning("could not sweep images the policy forbids: %s", exc)
            return
        if removed:
            log.warning(
                "swept %d images of opted-out members or excluded channels that had got in "
                "(a race between processes, or a restart before their deletion)",
                removed,
            )


async def setup(bot: ClipfindBot) -> None:
    await bot.add_cog(Upkeep(bot))
