"""Search results → what Discord shows: one embed per image, with score, author, channel, date,
a jump link, and its reposts; plus the sentences for input the member can fix."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import discord

from retrieval.errors import FetchError
from retrieval.pictures import ImageError, ImageTooLarge, NotAnImage
from retrieval.search import BadQuery, ResultGroup
from retrieval.store import SearchHit

EMBED_COLOUR = discord.Colour(0x5865F2)


def jump_url(hit: SearchHit) -> str:
    return f"https://discord.com/channels/{hit.guild_id}/{hit.channel_id}/{hit.message_id}"


def _reposts_line(group: ResultGroup) -> str:
    n = len(group.reposts)
    line = f"+{n} repost{'s' if n > 1 else ''}"
    earliest = group.earliest
    if earliest is group.hit:
        return f"{line} · this is the earliest"
    return f"{line} · [earliest]({jump_url(earliest)}) <t:{int(earliest.posted_at.timestamp())}:d>"


# The URL to show a result's image by (None: show none); see Access.picture.
Picture = Callable[[SearchHit], str | None]


def result_embed(group: ResultGroup, rank: int, picture: Picture) -> discord.Embed:
    hit = group.hit
    link = jump_url(hit)
    if hit.says and hit.similarity is None:
        found = "Found by its words"
    else:  # with words searched too, the score ranks both sides; the similarity is CLIP's
        found = f"Similarity **{hit.score if hit.similarity is None else hit.similarity:.2f}**"
    lines = [
        f"{found} · by <@{hit.author_id}> in <#{hit.channel_id}> "
        f"· <t:{int(hit.posted_at.timestamp())}:d>",
        f"[Jump to message]({link})",
    ]
    if hit.says:  # found by the words inside it: what it says around them
        lines.append(f"says: {quoted(hit.says, 120)}")
    if group.reposts:
        lines.append(_reposts_line(group))
    embed = discord.Embed(
        title=f"#{rank} · {hit.filename}"[:256],
        # Each embed needs its own url: Discord merges embeds that share one into a gallery.
        url=f"{link}#{hit.image_key}",
        description="\n".join(lines),
        timestamp=hit.posted_at,
        colour=EMBED_COLOUR,
    )
    # An attachment's unsigned CDN URL: Discord signs and refreshes it itself when it renders an
    # embed, so an answer never shows a link that expired. A link preview's picture: Discord's
    # copy, not the linked site, which could have swapped it since it was indexed.
    if (url := picture(hit)) is not None:
        embed.set_image(url=url)
    return embed


def results_message(
    heading: str,
    groups: Sequence[ResultGroup],
    *,
    first_rank: int = 1,
    total: int | None = None,
    more: bool = False,
    notes: Sequence[str] = (),
    picture: Picture,
) -> tuple[str, list[discord.Embed]]:
    """The text above the results (heading, range, notes) and one embed per result."""
    last = first_rank + len(groups) - 1
    shown = f"{first_rank}–{last}" if len(groups) > 1 else f"{first_rank}"
    count = f" of {total}{'+' if more else ''}" if total is not None else ""
    lines = [f"{heading} · {shown}{count}", *(f"-# {note}" for note in notes)]
    embeds = [result_embed(g, rank, picture) for rank, g in enumerate(groups, first_rank)]
    return "\n".join(lines)[:2000], embeds


def quoted(text: str, limit: int = 100) -> str:
    text = discord.utils.escape_markdown(discord.utils.escape_mentions(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


NOT_ON_DISCORD = "That image isn't stored on Discord, and I only download images from Discord."


def query_problem(error: Exception) -> str | None:
    """One sentence for input the member can fix; None for everything else."""
    if isinstance(error, BadQuery):
        return str(error)
    if isinstance(error, NotAnImage):
        return "That file isn't an image I can read: send a PNG, JPEG, WebP or GIF."
    if isinstance(error, ImageTooLarge) or getattr(error, "reason", "") == "too_large":
        return "That image is too large for me to read; try a smaller one."
    if isinstance(error, ImageError):
        return "I couldn't decode that image; it may be damaged. Try another one."
    if isinstance(error, FetchError) and error.reason == "off_discord":
        return NOT_ON_DISCORD
    if isinstance(error, FetchError):
        return "I couldn't download that image just now. Try again in a moment."
    return None
