"""`/clipfind status`: this server's figures for its members; the bot's owner also sees the
whole process (every server's work, queues, throughput), which no server's members may."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord

from bot.sight import listed, unreadable_channels

if TYPE_CHECKING:
    from bot.client import ClipfindBot

UNREADABLE_SHOWN = 25  # mentions with a reason are ~45 characters; a message holds 2,000


async def status_text(bot: ClipfindBot, *, guild: discord.Guild, manager: bool, owner: bool) -> str:
    """What the asker may see: ``manager`` (Manage Server) adds the channels the bot cannot
    read here, ``owner`` (the application's owner) the figures of the whole bot."""
    lines = await _server_lines(bot, guild.id)
    if manager:
        lines.append(_unreadable_line(bot, guild))
    if owner:
        lines += _process_lines(bot)
    return "\n".join(lines)


async def _server_lines(bot: ClipfindBot, guild_id: int) -> list[str]:
    counters = bot.pipeline.counters
    indexed_here = await bot.store.count(guild_id=guild_id, model_id=bot.encoder.model_id)
    lines = [
        f"**Images indexed in this server:** {indexed_here}",
        f"**Model:** `{bot.encoder.model_id}`{_runs_on(bot)}",
        f"**Waiting to be indexed here:** {counters.waiting.get(guild_id, 0)}",
    ]
    if failed := counters.failed_in.get(guild_id):
        reasons = ", ".join(f"{reason} {n}" for reason, n in failed.most_common())
        lines.append(f"**Skipped here since start:** {reasons}")
    if bot.reindexing:
        left = await bot.store.count(guild_id=guild_id) - indexed_here
        if left:
            lines.append(
                f"**Re-indexing for the new model:** {left} images here still to do; "
                "searches find them once they are done"
            )
    backfill = bot.get_cog("Backfill")
    if bot.backfill_progress is not None and backfill is not None:
        lines.append(f"**History backfill here:** {backfill.progress_in(guild_id)}")
    return lines


def _unreadable_line(bot: ClipfindBot, guild: discord.Guild) -> str:
    unreadable = unreadable_channels(guild, skip=bot.policy.excluded_in(guild.id))
    if not unreadable:
        return "**Channels I cannot index:** none, I can read every channel here."
    return (
        f"**Channels I cannot index** ({len(unreadable)}; give my role the permission named to "
        f"index them): {listed(unreadable, at_most=UNREADABLE_SHOWN)}"
    )


def _process_lines(bot: ClipfindBot) -> list[str]:
    pipeline = bot.pipeline.counters
    encoder = bot.encoder.counters
    lines = [
        f"**Whole bot** (only you, its owner, see this; {len(bot.guilds)} servers):",
        (
            f"**Pipeline since start:** {pipeline.indexed} encoded, {pipeline.reused} reposts "
            f"reused, {pipeline.already_known} already known; {bot.pipeline.queued} queued, "
            f"{pipeline.in_flight} downloading; {pipeline.images_per_s():.1f} images/s"
        ),
        (
            f"**Searches:** {encoder.text_queries} ({encoder.text_cache_hits} from the cache); "
            f"{encoder.image_batches} image batches encoded"
        ),
    ]
    if pipeline.failed:
        reasons = ", ".join(f"{reason} {n}" for reason, n in pipeline.failed.most_common())
        lines.append(f"**Skipped images, all servers:** {reasons}")
    if bot.backfill_progress is not None:
        lines.append(f"**History backfill, all servers:** {bot.backfill_progress}")
    return lines


def _runs_on(bot: ClipfindBot) -> str:
    encoder = bot.encoder.encoder
    precision, device = getattr(encoder, "precision", None), getattr(encoder, "device", None)
    return f" ({precision} on {device})" if precision and device else ""
