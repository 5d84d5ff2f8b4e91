"""The clipfind bot: a commands.Bot that is handed its resources and loads one cog per feature."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.errors import on_app_command_error
from bot.startup import invite_url
from retrieval.state import get_state, set_state

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from retrieval.backfill import BackfillProgress
    from retrieval.config import Settings
    from retrieval.encoding import EncoderService
    from retrieval.indexing import IndexingPipeline
    from retrieval.policy import IndexPolicy
    from retrieval.store import VectorStore

log = logging.getLogger(__name__)

EXTENSIONS = (
    "bot.cogs.indexing",
    "bot.cogs.search",
    "bot.cogs.backfill",
    "bot.cogs.lifecycle",
    "bot.cogs.privacy",
    "bot.cogs.policy",
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


class ClipfindBot(commands.Bot):
    def __init__(
        self,
        *,
        settings: Settings,
        engine: AsyncEngine,
        store: VectorStore,
        encoder: EncoderService,
        pipeline: IndexingPipeline,
        policy: IndexPolicy,
        **options,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents(),
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
            **options,
        )
        self.settings = settings
        self.engine = engine
        self.store = store
        self.encoder = encoder
        self.pipeline = pipeline
        self.policy = policy
        # Set by the backfill cog while it runs; read by the status command.
        self.backfill_progress: BackfillProgress | None = None
        # Rows per other model left from before a model switch (see retrieval/reindex.py).
        self.reindexing: dict[str, int] = {}
        # What `python -m bot` exits with once the bot stops; set by whatever stopped it.
        self.exit_status = 0

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.tree.on_error = on_app_command_error
        await self._sync_commands_if_changed()
        freeze_heap()  # the model and every cog are loaded: what follows comes and goes

    async def _sync_commands_if_changed(self) -> None:
        """Discord rate-limits command syncs; only sync when the definitions changed."""
        payload = [command.to_dict(self.tree) for command in self.tree.get_commands()]
        digest = hashlib.sha256(
            json.dumps([self.application_id, payload], sort_keys=True, default=str).encode()
        ).hexdigest()
        if await get_state(self.engine, _COMMANDS_HASH) == digest:
            log.info("application commands unchanged; not syncing")
            return
        synced = await self.tree.sync()
        await set_state(self.engine, _COMMANDS_HASH, digest)
        log.info("synced %d application commands", len(synced))

    async def on_ready(self) -> None:
        guilds = ", ".join(g.name for g in self.guilds) or "none yet"
        log.info(
            "connected as %s (id %s); guilds: %s", self.user, self.user and self.user.id, guilds
        )
        if self.application_id is None:
            return
        url = invite_url(self.application_id)
        if not self.guilds:
            # A fresh bot in no server hears no messages and shows no commands: say what to do.
            log.warning("clipfind is in no server yet, so nothing to index; invite it: %s", url)
        else:
            log.info("invite link (to add clipfind to another server): %s", url)
