"""Messages the bot writes (channel messages, interaction responses, follow-ups, edits).

Bodies come as JSON or as multipart (`payload_json` + `files[n]`, which is how discord.py
uploads files); either way they become the same stored `Message`, echoed back the way
Discord echoes them (component ids filled in, embed `type` added, attachments on the CDN).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .models import Attachment, Channel, Message

if TYPE_CHECKING:
    from .server import FakeDiscord

EPHEMERAL = 1 << 6
LOADING = 1 << 7
# Flags a bot may set when sending; the rest are Discord's to set.
SETTABLE_FLAGS = (1 << 2) | (1 << 6) | (1 << 12) | (1 << 15)
_FILE_FIELD = re.compile(r"^files\[(\d+)\]$|^file(\d*)$")


@dataclass
class Upload:
    index: int
    filename: str
    data: bytes
    content_type: str | None


async def read_body(request: web.Request) -> tuple[dict[str, Any], list[Upload]]:
    """The JSON payload and uploaded files of a REST request."""
    if not request.content_type.startswith("multipart/"):
        raw = await request.read()
        return (json.loads(raw) if raw.strip() else {}), []
    payload: dict[str, Any] = {}
    uploads: list[Upload] = []
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if part.name == "payload_json":
            payload = json.loads(await part.text())
            continue
        match = _FILE_FIELD.match(part.name or "")
        if match is None:
            continue
        index = int(match.group(1) or match.group(2) or 0)
        declared = part.headers.get("Content-Type")
        # discord.py labels every file application/octet-stream; Discord sniffs instead.
        ctype = None if declared in (None, "application/octet-stream") else declared
        uploads.append(Upload(index, part.filename or f"file{index}", await part.read(), ctype))
    return payload, uploads


def number_components(components: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Copy components, giving each a numeric `id` as Discord does when none was sent."""
    counter = [0]

    def walk(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for item in items:
            item = dict(item)
            counter[0] += 1
            item.setdefault("id", counter[0])
            for key in ("components",):
                if key in item:
                    item[key] = walk(item[key])
            if "accessory" in item:
                item["accessory"] = walk([item["accessory"]])[0]
            out.append(item)
        return out

    return walk(list(components or []))


def normalise_embeds(embeds: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for embed in embeds or []:
        embed = dict(embed)
        embed.setdefault("type", "rich")
        for key in ("image", "thumbnail"):
            if isinstance(embed.get(key), dict) and "url" in embed[key]:
                embed[key] = {"proxy_url": embed[key]["url"], **embed[key]}
        out.append(embed)
    return out


def find_component(components: list[dict[str, Any]], custom_id: str) -> dict[str, Any] | None:
    for item in components:
        if item.get("custom_id") == custom_id:
            return item
        nested = list(item.get("components", []))
        if "accessory" in item:
            nested.append(item["accessory"])
        found = find_component(nested, custom_id)
        if found is not None:
            return found
    return None


def custom_ids(components: list[dict[str, Any]]) -> list[str]:
    out = []
    for item in components:
        if "custom_id" in item:
            out.append(item["custom_id"])
        out += custom_ids(
            item.get("components", []) + ([item["accessory"]] if "accessory" in item else [])
        )
    return out


def _attachments(
    fd: FakeDiscord,
    channel: Channel,
    payload: dict[str, Any],
    uploads: list[Upload],
    keep: list[Any],
    ephemeral: bool,
) -> list[Any]:
    """Existing attachments listed in `payload['attachments']` plus the uploaded files."""
    described = {str(a.get("id")): a for a in payload.get("attachments") or []}
    kept = [a for a in keep if str(a.id) in described] if "attachments" in payload else list(keep)
    for up in sorted(uploads, key=lambda u: u.index):
        meta = described.get(str(up.index), {})
        upload = Attachment(
            meta.get("filename") or up.filename, up.data, up.content_type, meta.get("description")
        )
        kept.append(fd.cdn.store(channel.id, upload, ephemeral=ephemeral))
    return kept


def new_bot_message(
    fd: FakeDiscord, channel: Channel, payload: dict[str, Any], uploads: list[Upload], **extra: Any
) -> Message:
    flags = int(payload.get("flags") or 0) & SETTABLE_FLAGS | extra.pop("flags", 0)
    ephemeral = bool(flags & EPHEMERAL)
    msg = Message(
        fd.ids.next(),
        channel,
        fd.bot_user,
        content=payload.get("content") or "",
        embeds=normalise_embeds(payload.get("embeds")),
        components=number_components(payload.get("components")),
        flags=flags,
        tts=bool(payload.get("tts")),
        **extra,
    )
    msg.attachments = _attachments(fd, channel, payload, uploads, [], ephemeral)
    msg.mentions = fd.parse_user_mentions(msg.content, channel.guild)
    ref = payload.get("message_reference")
    if ref and ref.get("message_id"):
        msg.message_reference = {
            "type": 0,
            "message_id": str(ref["message_id"]),
            "channel_id": str(channel.id),
            "guild_id": str(channel.guild.id),
        }
        msg.type = 19 if msg.type == 0 else msg.type
    return msg


def apply_edit(
    fd: FakeDiscord, msg: Message, payload: dict[str, Any], uploads: list[Upload]
) -> None:
    was_loading = bool(msg.flags & LOADING)
    if "content" in payload:
        msg.content = payload["content"] or ""
    if "embeds" in payload:
        msg.embeds = normalise_embeds(payload["embeds"])
    if "components" in payload:
        msg.components = number_components(payload["components"])
    if "flags" in payload and payload["flags"] is not None:
        # Ephemerality is fixed when the message is created; edits cannot change it.
        wanted = int(payload["flags"]) & SETTABLE_FLAGS & ~EPHEMERAL
        msg.flags = (msg.flags & ~SETTABLE_FLAGS) | wanted | (msg.flags & EPHEMERAL)
    if "attachments" in payload or uploads:
        old = list(msg.attachments)
        msg.attachments = _attachments(
            fd, msg.channel, payload, uploads, old, bool(msg.flags & EPHEMERAL)
        )
        for att in old:
            if att not in msg.attachments:
                fd.cdn.forget(att)
    msg.flags &= ~LOADING
    msg.mentions = fd.parse_user_mentions(msg.content, msg.channel.guild)
    # Turning a "thinking..." message into the answer is not an edit in Discord's eyes.
    if not was_loading:
        msg.edited_at = fd.clock()
