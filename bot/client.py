"""The clipfind bot: an AutoShardedBot that is handed its resources and loads one cog per feature.

One process runs every shard Discord recommends; SHARD_COUNT and SHARD_IDS split them over
processes sharing one PostgreSQL database.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.backfill import BackfillScheduler
from bot.erasure import Eraser
from bot.error_replies import on_app_command_error
from bot.identify import IdentifyGate
from bot.startup import invite_url
from retrieval.database import Purpose, get_state, held, is_shared, set_state
from retrieval.runtime import freeze_heap
from retrieval.shards import listed

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from retrieval.config import Settings
    from retrieval.database import DatabaseFile
    from retrieval.encoding import EncoderService
    from retrieval.indexing import BackfillCursors, BackfillProgress, IndexingPipeline, JobQueue
    from retrieval.pictures import Fetcher
    from retrieval.policy import IndexPolicy
    from retrieval.runtime import Services
    from retrieval.store import VectorStore
    from retrieval.supervisor import Supervisor

log = logging.getLogger(__name__)

EXTENSIONS = (
    "bot.cogs.live",
    "bot.cogs.search",
    "bot.cogs.backfill",
    "bot.cogs.lifecycle",
    "bot.cogs.privacy",
    "bot.cogs.upkeep",
    "bot.cogs.admin",
)
_COMMANDS_HASH = "commands_hash"


def intents() -> discord.Intents:
    # Without message content Discord sends guild messages without attachments or embeds.
    wanted = discord.Intents.default()
    wanted.message_content = True
    return wanted


class ClipfindTree(app_commands.CommandTree):
    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await on_app_command_error(interaction, error)


class ClipfindBot(commands.AutoShardedBot):
    """Handed its services whole (`retrieval.runtime.Services`); owns what is Discord's: the
    backfill scheduler and the eraser, which every cog reaches through the bot."""

    def __init__(
        self,
        *,
        services: Services,
        database: DatabaseFile | None = None,
        reindexing: dict[str, int] | None = None,
        **options,
    ) -> None:
        settings = services.settings
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents(),
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
            shard_count=settings.shard_count,
            shard_ids=settings.shard_id_list(),
            tree_cls=ClipfindTree,
            **options,
        )
        self._services = services
        self.identify_gate = IdentifyGate(services.engine)
        self._database = database  # the SQLite file; None on PostgreSQL
        # Rows per other model left from before a model switch (see
        # retrieval/indexing/model_switch.py).
        self.reindexing: dict[str, int] = reindexing or {}
        self._backfill = BackfillScheduler(self)
        # Every deletion goes through it, so that it stays deleted (bot/erasure.py).
        self._eraser = Eraser(services.pipeline)
        # What `python -m bot` exits with once the bot stops; set by whatever stopped it.
        self.exit_status = 0

    # What the cogs reach through the bot: read-only, each of one type, set once above.

    @property
    def services(self) -> Services:
        return self._services

    @property
    def settings(self) -> Settings:
        return self._services.settings

    @property
    def engine(self) -> AsyncEngine:
        return self._services.engine

    @property
    def store(self) -> VectorStore:
        return self._services.store

    @property
    def encoder(self) -> EncoderService:
        return self._services.encoder

    @property
    def pipeline(self) -> IndexingPipeline:
        return self._services.pipeline

    @property
    def jobs(self) -> JobQueue:
        return self._services.jobs

    @property
    def fetcher(self) -> Fetcher:
        return self._services.fetcher

    @property
    def policy(self) -> IndexPolicy:
        return self._services.policy

    @property
    def cursors(self) -> BackfillCursors:
        return self._services.cursors

    @property
    def supervisor(self) -> Supervisor:
        """Runs every long-lived task of the process (the cogs' loops too), restarting a failed
        one."""
        return self._services.supervisor

    @property
    def backfill(self) -> BackfillScheduler:
        return self._backfill

    @property
    def eraser(self) -> Eraser:
        return self._eraser

    @property
    def backfill_progress(self) -> BackfillProgress | None:
        """Backfill's counters while it runs in this process (BACKFILL=true); None otherwise."""
        return self.backfill.progress if self.backfill.started else None

    async def confirm_saved(self) -> None:
        """Before telling someone a change is done: raise DatabaseLost if it was written into a
        SQLite file deleted or replaced under the running bot (see
        retrieval/database/sqlite_file.py)."""
        if self._database is not None:
            await self._database.confirm()

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self._sync_commands_if_changed()
        await self.backfill.start()
        freeze_heap()  # the model and every cog are loaded: what follows comes and goes

    async def _sync_commands_if_changed(self) -> None:
        """Discord rate-limits command syncs; only sync when the definitions changed.

        Once per deploy, not once per process: processes starting together take turns, and
        each reads the stored hash only once it has its turn, so the first syncs and the rest
        find the new hash.
        """
        payload = [command.to_dict(self.tree) for command in self.tree.get_commands()]
        digest = hashlib.sha256(
            json.dumps([self.application_id, payload], sort_keys=True, default=str).encode()
        ).hexdigest()
        async with held(self.engine, purpose=Purpose.COMMAND_SYNC):
            if await get_state(self.engine, _COMMANDS_HASH) == digest:
                log.info("application commands unchanged; not syncing")
                return
            synced = await self.tree.sync()
            await set_state(self.engine, _COMMANDS_HASH, digest)
        log.info("synced %d application commands", len(synced))

    async def launch_shards(self) -> None:
        # discord.py asks GET /gateway/bot only without a shard count, and drops the session
        # start limit it reads there; ask once, keep max_concurrency, and hand it the count.
        if not self.is_closed():
            count, _, limit = await self.http.get_bot_gateway()
            self.identify_gate.max_concurrency = limit["max_concurrency"]
            if self.shard_count is None:
                self.shard_count = count
            starts = len(self.shard_ids or range(self.shard_count))
            if limit["remaining"] < starts:
                log.warning(
                    "Discord allows %d more session starts today (%d shards to start); the "
                    "count resets in %.1f h",
                    limit["remaining"],
                    starts,
                    limit["reset_after"] / 3_600_000,
                )
        await super().launch_shards()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if shard_id is not None and is_shared(self.engine):
            # Other processes IDENTIFY too: take turns through the database.
            await self.identify_gate.wait_turn(shard_id)
        else:
            # One process (SQLite): discord.py's own pacing of its shards is enough.
            await super().before_identify_hook(shard_id, initial=initial)

    async def close(self) -> None:
        log.debug("closing: backfill")
        await self.backfill.stop()
        log.debug("closing: Discord")
        await super().close()
        self.eraser.close()
        await self.identify_gate.close()
        log.debug("closed")

    def _shard_text(self) -> str:
        if len(self.shards) > 16:
            return f"{len(self.shards)} shards of {self.shard_count}"
        return f"shards {listed(self.shards, self.shard_count)}"

    async def on_shard_ready(self, shard_id: int) -> None:
        guilds = sum(1 for g in self.guilds if g.shard_id == shard_id)
        log.info("shard %d of %s ready: %d guilds", shard_id, self.shard_count, guilds)

    async def on_ready(self) -> None:
        guilds = ", ".join(g.name for g in self.guilds[:20]) or "none yet"
        more = f" and {len(self.guilds) - 20} more" if len(self.guilds) > 20 else ""
        log.info(
            "connected as %s (id %s); %s; %d guilds: %s%s",
            self.user,
            self.user and self.user.id,
            self._shard_text(),
            len(self.guilds),
            guilds,
            more,
        )
        if self.application_id is None:
            return
        url = invite_url(self.application_id)
        if not self.guilds:
            # A fresh bot in no server hears no messages and shows no commands: say what to do.
            log.warning("clipfind is in no server yet, so nothing to index; invite it: %s", url)
        else:
            log.info("invite link (to add clipfind to another server): %s", url)
