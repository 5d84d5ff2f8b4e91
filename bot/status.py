"""`/clipfind status`: this server's figures for its members; the bot's owner also sees the
whole process (every server's work, queues, throughput), which no server's members may."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord

from bot.ownership import ownership
from bot.sight import listed, unreadable_channels
from retrieval.indexing import OCR_LANE
from retrieval.runtime import age, counted, read_figures

if TYPE_CHECKING:
    from bot.client import ClipfindBot
    from retrieval.indexing import Backlog
    from retrieval.runtime import ClusterFigures, Consumer

UNREADABLE_SHOWN = 25  # mentions with a reason are ~45 characters; a message holds 2,000
CONSUMERS_SHOWN = 8  # one is ~90 characters


async def status_text(bot: ClipfindBot, *, guild: discord.Guild, manager: bool, owner: bool) -> str:
    """What the asker may see: ``manager`` (Manage Server) adds the channels the bot cannot
    read here, ``owner`` (the application's owner) the figures of the whole bot."""
    lines = await _server_lines(bot, guild.id)
    if manager:
        lines.append(_unreadable_line(bot, guild))
    if owner:
        lines += await _process_lines(bot)
    return "\n".join(lines)


async def _server_lines(bot: ClipfindBot, guild_id: int) -> list[str]:
    indexed_here = await bot.store.count(guild_id=guild_id, model_id=bot.encoder.model_id)
    backlog = await bot.jobs.backlog(guild_id)
    lines = [
        f"**Images indexed in this server:** {indexed_here}",
        f"**Model:** `{bot.encoder.model_id}`{_runs_on(bot)}",
        f"**Waiting to be indexed here:** {_waiting(backlog)}",
    ]
    if backlog.failed:
        lines.append(f"**Could not be indexed here:** {_reasons(backlog.failed)}")
    if bot.settings.ocr:
        reading = await bot.jobs.for_lane(OCR_LANE).backlog(guild_id)
        lines.append(f"**Pictures whose words are still to be read here:** {_waiting(reading)}")
        if reading.failed:
            lines.append(f"**Words that could not be read here:** {_reasons(reading.failed)}")
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
    if bot.backfill_progress is not None:
        lines.append(f"**History backfill here:** {bot.backfill.progress_in(guild_id)}")
    return lines


def _unreadable_line(bot: ClipfindBot, guild: discord.Guild) -> str:
    unreadable = unreadable_channels(guild, skip=bot.policy.excluded_in(guild.id))
    if not unreadable:
        return "**Channels I cannot index:** none, I can read every channel here."
    return (
        f"**Channels I cannot index** ({len(unreadable)}; give my role the permission named to "
        f"index them): {listed(unreadable, at_most=UNREADABLE_SHOWN)}"
    )


async def _process_lines(bot: ClipfindBot) -> list[str]:
    pipeline = bot.pipeline.counters
    encoder = bot.encoder.counters
    backlog = await bot.jobs.backlog()
    problem = bot.supervisor.problem()
    lines = [
        f"**Whole bot** (only you, its owner, see this; {_servers(bot)}):",
        f"**Health of this process:** "
        f"{'healthy' if problem is None else f'unhealthy: {cut(problem, 300)}'}",
        f"**Waiting to be indexed, all servers:** {_waiting(backlog)}",
        (
            f"**This process since start:** {pipeline.indexed} encoded, {pipeline.reused} "
            f"reposts reused, {pipeline.retried} retries; {bot.pipeline.queued} in hand, "
            f"{pipeline.in_flight} downloading; {pipeline.images_per_s():.1f} images/s"
            if bot.pipeline.consumes
            else f"**This process since start:** {pipeline.submitted} images sent to the "
            "database queue (an edited message's again); encoder workers encode them "
            "(ENCODE_IMAGES=false)"
        ),
        (
            f"**Searches:** {encoder.text_queries} ({encoder.text_cache_hits} from the cache); "
            f"{encoder.image_batches} image batches encoded"
        ),
    ]
    if (reading := bot.services.reading) is not None:
        words = reading.counters
        lines.append(
            f"**Words read by this process since start:** {words.indexed} pictures read, "
            f"{words.reused} copied from the same picture, {sum(words.failed.values())} "
            f"unreadable, {words.retried} retries; {reading.held} in hand"
        )
    if backlog.failed:
        lines.append(f"**Could not be indexed, all servers:** {_reasons(backlog.failed)}")
    if bot.backfill_progress is not None:
        lines.append(f"**History backfill, all servers:** {bot.backfill_progress}")
    return lines + _cluster_lines(await read_figures(bot.engine))


def _servers(bot: ClipfindBot) -> str:
    """This process's servers; with the shards split over processes, those of its shards only
    (the others' servers are not in its gateway session)."""
    shards = ownership(bot)
    if shards.everything:
        return f"{len(bot.guilds)} servers"
    return f"this process runs {shards}: {len(bot.guilds)} servers, other processes the rest"


def _cluster_lines(figures: ClusterFigures) -> list[str]:
    """Every process on this database: each lane's queue, and who takes it how fast."""
    queue = (
        f"**Queue, whole cluster:** {counted(figures.waiting)} waiting (oldest "
        f"{age(figures.oldest_waiting_s)}), {counted(figures.retrying)} waiting for a retry, "
        f"{figures.claimed:,} being worked on"
    )
    encoders = (
        f"**Encoding, whole cluster:** {figures.rate:.1f} images/s from "
        f"{_processes(figures.consumers, done='stored')}"
    )
    reading = (
        f"**Words to read, whole cluster:** {counted(figures.reading_waiting)} pictures waiting, "
        f"{counted(figures.reading_retrying)} waiting for a retry, {figures.reading_claimed:,} "
        "being read (read once no image waits for its vector)"
    )
    readers = (
        f"**Reading, whole cluster:** {figures.reading_rate:.1f} pictures/s from "
        f"{_processes(figures.readers, done='read')}"
    )
    return [queue, encoders, reading, readers]


def _processes(rows: list[Consumer], *, done: str) -> str:
    """How many processes take a lane, and each one's figures in it."""
    each = [
        f"{c.role} on {c.host}{f' (shards {c.shards})' if c.shards else ''}: {c.rate:.1f}/s, "
        f"{c.images_stored:,} {done}, {c.in_hand} in hand"
        f"{f', UNHEALTHY: {cut(c.problem, 120)}' if c.problem else ''}"
        for c in rows[:CONSUMERS_SHOWN]
    ]
    if (more := len(rows) - CONSUMERS_SHOWN) > 0:
        each.append(f"and {more} more")
    said = f"{len(rows)} process{'' if len(rows) == 1 else 'es'}"
    return said + (f" ({'; '.join(each)})" if each else "")


def cut(text: str, at_most: int) -> str:
    """A message holds 2,000 characters: a long reason is shortened, its start kept."""
    return text if len(text) <= at_most else text[: at_most - 1] + "…"


def _waiting(backlog: Backlog) -> str:
    if not backlog.retrying:
        return str(backlog.waiting)
    return (
        f"{backlog.waiting + backlog.retrying} ({backlog.retrying} being retried after a "
        "failure: Discord's CDN did not answer; they are kept and tried again)"
    )


def _reasons(failed: dict[str, int]) -> str:
    ranked = sorted(failed.items(), key=lambda item: -item[1])
    return ", ".join(f"{reason} {n}" for reason, n in ranked)


def _runs_on(bot: ClipfindBot) -> str:
    model = bot.services.model
    precision, device = getattr(model, "precision", None), getattr(model, "device", None)
    return f" ({precision} on {device})" if precision and device else ""
