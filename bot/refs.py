"""Discord messages → ImageRefs: which attachments and embeds are images worth indexing.

Everything here comes from members (file names, links), so every ref is cleaned before it goes
anywhere (retrieval/indexing/inputs.py), and reading a message never fails on what a member wrote: a
link that does not parse still makes a ref, which the jobs queue counts as failed (``invalid_url``).
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import TYPE_CHECKING, NamedTuple

import discord
import yarl

from retrieval.database import UNKNOWN_PARENT
from retrieval.indexing import ImageRef, clean_ref
from retrieval.pictures import unsigned

if TYPE_CHECKING:
    from bot.client import ClipfindBot

IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/gif"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".gif"}


def embed_key(url: str) -> int:
    """A stable positive 63-bit key for an embed's picture (embeds have no ids)."""
    # surrogatepass: a link may hold a lone surrogate, which UTF-8 cannot encode.
    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _file_name(url: str) -> str:
    """The last part of a picture link's path, as its file name."""
    try:
        path = yarl.URL(url).path
    except ValueError:  # e.g. a port above 65535
        return "image"
    return posixpath.basename(path) or "image"


def _looks_like_image(content_type: str | None, filename: str) -> bool:
    if content_type:
        return content_type.split(";", 1)[0].strip().lower() in IMAGE_TYPES
    return posixpath.splitext(filename.lower())[1] in IMAGE_EXTENSIONS


def parent_of(channel: object) -> int | None:
    """A thread's channel; None for a channel that is no thread; UNKNOWN_PARENT for a bare
    channel (discord.py's PartialMessageable, for a thread its cache does not hold)."""
    if isinstance(channel, discord.Thread):
        return channel.parent_id
    if isinstance(channel, discord.abc.GuildChannel):
        return None
    return UNKNOWN_PARENT


def image_refs(message: discord.Message, *, channel: object = None) -> list[ImageRef]:
    """The images of a guild message. The pipeline still sniffs the bytes before decoding.

    ``channel``: the message's channel as resolved when the message came with a bare one."""
    if message.guild is None:
        return []
    common = dict(
        guild_id=message.guild.id,
        channel_id=message.channel.id,
        message_id=message.id,
        author_id=message.author.id,
        posted_at=message.created_at,
        parent_id=parent_of(channel or message.channel),
    )
    refs = [
        _cleaned(
            **common,
            image_key=a.id,
            kind="attachment",
            url=a.url,
            source_url=unsigned(a.url),
            filename=a.filename,
            content_type=a.content_type or "",
            size=a.size,
            proxy_url=a.proxy_url,
            width=a.width,
            height=a.height,
        )
        for a in message.attachments
        if _looks_like_image(a.content_type, a.filename)
    ]
    for picture in _embed_pictures(message):
        refs.append(
            _cleaned(
                **common,
                image_key=embed_key(picture.url),
                kind="embed",
                url=picture.proxy_url,
                source_url=picture.url,
                filename=_file_name(picture.url),
                proxy_url=picture.proxy_url,
                width=picture.width,
                height=picture.height,
            )
        )
    return refs


def _cleaned(**values) -> ImageRef:
    return clean_ref(ImageRef(**values))


def image_keys(message: discord.Message) -> frozenset[int]:
    """The keys of the images the message shows now: what an indexed row must still match."""
    embeds = frozenset(embed_key(picture.url) for picture in _embed_pictures(message))
    return frozenset(a.id for a in message.attachments) | embeds


class EmbedPicture(NamedTuple):
    """A link preview's picture: its own URL, Discord's proxied copy (what is downloaded), and
    its size as the preview gives it (None where it does not)."""

    url: str
    proxy_url: str
    width: int | None
    height: int | None


def _embed_pictures(message: discord.Message) -> list[EmbedPicture]:
    """One picture per distinct embed picture URL the message shows."""
    if message.flags.suppress_embeds:  # a hidden preview is not shown, whatever the list says
        return []
    pictures: dict[str, EmbedPicture] = {}
    for embed in message.embeds:
        picture = _embed_picture(embed)
        if picture is not None:
            pictures.setdefault(picture.url, picture)
    return list(pictures.values())


def _embed_picture(embed: discord.Embed) -> EmbedPicture | None:
    """The picture of an embed that shows a still picture Discord proxies."""
    if embed.type == "image":
        media = embed.thumbnail if embed.thumbnail.url else embed.image
    elif embed.type in ("rich", "article") and embed.image.url:
        media = embed.image
    else:  # gifv and video embeds are moving pictures; links without a picture have nothing
        return None
    # Without a proxy_url Discord holds no copy, and the picture's own URL is on a host the
    # poster chose: fetching it would tell that host the bot's address and when it read the
    # message. Such a picture is left out, not downloaded from there.
    if not media.url or not media.proxy_url:
        return None
    return EmbedPicture(media.url, media.proxy_url, media.width, media.height)


def wanted(bot: ClipfindBot, message: discord.Message, *, channel: object = None) -> bool:
    """May this message's images be indexed? Live messages and backfill ask the same question.
    ``channel``: the message's channel as resolved when it came with a bare one."""
    if message.guild is None:
        return False
    if message.author.id == (bot.user and bot.user.id):
        return False
    if message.author.bot and not bot.settings.index_bot_messages:
        return False
    return bot.policy.allows(
        channel_id=message.channel.id,
        author_id=message.author.id,
        parent_id=parent_of(channel or message.channel),
    )
