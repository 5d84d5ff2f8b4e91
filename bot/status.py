"""The bot's counters as one message, for `/clipfind status` (operators and curious members)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.client import ClipfindBot


async def status_text(bot: ClipfindBot, guild_id: int) -> str:
    pipeline = bot.pipeline.counters
    encoder = bot.encoder.counters
    indexed_here = await bot.store.count(guild_id=guild_id, model_id=bot.encoder.model_id)
    lines = [
        f"**Images indexed in this server:** {indexed_here}",
        f"**Model:** `{bot.encoder.model_id}`{_runs_on(bot)}",
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
        lines.append(f"**Skipped images:** {reasons}")
    if bot.reindexing:
        left = await bot.store.count(guild_id=guild_id) - indexed_here
        if left:
            line = (
                f"**Re-indexing for the new model:** {left} images here still to do; "
                "searches find them once they are done"
            )
            if (days := bot.settings.backfill_max_age_days) is not None:
                # Backfill does not read that far back, so these wait for a wider window.
                line += f" (those older than {days} days are not read again)"
            lines.append(line)
    progress = getattr(bot, "backfill_progress", None)
    if progress is not None:
        lines.append(f"**History backfill:** {progress}")
    return "\n".join(lines)


def _runs_on(bot: ClipfindBot) -> str:
    encoder = bot.encoder.encoder
    precision, device = getattr(encoder, "precision", None), getattr(encoder, "device", None)
    return f" ({precision} on {device})" if precision and device else ""
