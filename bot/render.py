"""Search results → what Discord shows: one embed per image, with score, author, channel, link."""

from __future__ import annotations

import discord

from retrieval.store import SearchHit

EMBED_COLOUR = discord.Colour(0x5865F2)


def jump_url(hit: SearchHit) -> str:
    return f"https://discord.com/channels/{hit.guild_id}/{hit.channel_id}/{hit.message_id}"


def result_embed(hit: SearchHit, rank: int) -> discord.Embed:
    link = jump_url(hit)
    embed = discord.Embed(
        title=f"#{rank} · {hit.filename}"[:256],
        # Each embed needs its own url: Discord merges embeds that share one into a gallery.
        url=f"{link}#{hit.image_key}",
        description=(
            f"Similarity **{hit.score:.2f}** · by <@{hit.author_id}> in <#{hit.channel_id}>\n"
            f"[Jump to message]({link})"
        ),
        timestamp=hit.posted_at,
        colour=EMBED_COLOUR,
    )
    embed.set_image(url=hit.source_url)
    return embed


def results_message(query: str, hits: list[SearchHit]) -> tuple[str, list[discord.Embed]]:
    shown = discord.utils.escape_markdown(query)[:100]
    noun = "image" if len(hits) == 1 else "images"
    content = f"Top {len(hits)} {noun} for **{shown}**"
    return content, [result_embed(hit, rank) for rank, hit in enumerate(hits, 1)]
