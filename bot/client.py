"""The clipfind bot: an AutoShardedBot that is handed its resources and loads one cog per feature.

One process runs every shard Discord recommends; SHARD_COUNT and SHARD_IDS split them over
processes sharing one PostgreSQL database.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.errors import on_app_command_error
from bot.identify import IdentifyGate
from bot.startup import invite_url
from retrieval.database import Purpose, get_state, held, is_shared, set_state

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from retrieval.config import Settings
    from retrieval.database import DatabaseFile
    from retrieval.encoding import EncoderService
    from retrieval.indexing import BackfillProgress, IndexingPipeline
    from retrieval.policy import IndexPolicy
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


def freeze_heap() -> None:
    """Take what start-up built out of the garbage collector's sight.

    The model, torch, open_clip and discord.py leave some 440,000 objects that live as long as
    the process. A full collection scans them all, about 0.3 s with the event loop stopped,
    and a busy stretch (a large guild's matrix loading, a flood of images) sets off several.
    Frozen, they are skipped; collections then scan only what came later.
    """
    gc.collect()  # garbage left now would never be collected once frozen
    gc.freeze()


def intents() -> discord.Intents:
    # Without message content Discord sends guild messages without attachments or embeds.
    wanted = discord.Intents.default()
    wanted.message_content = True
    return wanted


class ClipfindBot(commands.AutoShardedBot):
    def __init__(
        self,
        *,
        settings: Settings,
        engine: AsyncEngine,
        store: VectorStore,
        encoder: EncoderService,
        pipeline: IndexingPipeline,
        policy: IndexPolicy,
        database: DatabaseFile | None = None,
        supervisor: Supervisor,
        **options,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents(),
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
            shard_count=settings.shard_count,
            shard_ids=settings.shard_id_list(),
            **options,
        )
        self.settings = settings
        self.identify_gate = IdentifyGate(engine)
        self.engine = engine
        self.store = store
        self.encoder = encoder
        self.pipeline = pipeline
        self.policy = policy
        self._database = database  # the SQLite file; None on PostgreSQL
        # Runs every long-lived task of the process (the cogs' loops too), restarting a failed one.
        self.supervisor = supervisor
        # Set by the backfill cog while it runs; read by the status command.
        self.backfill_progress: BackfillProgress | None = None
        # Rows per other model left from before a model switch (see
        # retrieval/indexing/model_switch.py).
        self.reindexing: dict[str, int] = {}
        # What `python -m bot` exits with once the bot stops; set by whatever stopped it.
        self.exit_status = 0

    async def confirm_saved(self) -> None:
        """Before telling someone a change is done: raise DatabaseLost if it was written into a
        SQLite file deleted or replaced under the running bot (see
        retrieval/database/sqlite_file.py)."""
        if self._database is not None:
            await self._database.confirm()

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.tree.on_error = on_app_command_error
        await self._sync_commands_if_changed()
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
        await super().close()
        await self.identify_gate.close()

    def _shard_text(self) -> str:
        ids = sorted(self.shards)
        listed = ",".join(map(str, ids)) if len(ids) <= 16 else f"{len(ids)} shards"
        return f"shards {listed} of {self.shard_count}"

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
