"""REST routes for channels, their messages and their archived threads.

Access follows the bot's computed permissions: no VIEW_CHANNEL gives 403 code 50001;
without READ_MESSAGE_HISTORY a history read is an empty list (Discord's documented
behaviour) and a single-message read is 403.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import payloads
from . import responses as r
from .messages import apply_edit, new_bot_message
from .models import Channel, Message
from .permissions import P
from .rest import bot_permissions, require

if TYPE_CHECKING:
    from .server import FakeDiscord

API = "/api/v10"
CH = API + "/channels/{channel}"


class ChannelRoutes:
    def __init__(self, fd: FakeDiscord) -> None:
        self.fd = fd

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get(CH, self.channel),
            web.get(CH + "/messages", self.history),
            web.post(CH + "/messages", self.send),
            web.get(CH + "/messages/{message}", self.message),
            web.patch(CH + "/messages/{message}", self.edit),
            web.delete(CH + "/messages/{message}", self.delete),
            web.post(CH + "/typing", self.typing),
            web.get(CH + "/threads/archived/public", self.archived_public),
            web.get(CH + "/threads/archived/private", self.archived_private),
            web.get(CH + "/users/@me/threads/archived/private", self.archived_joined),
            web.get(CH + "/thread-members/{user}", self.thread_member),
        ]

    def _channel(self, request: web.Request) -> Channel:
        channel = self.fd.channels.get(int(request.match_info["channel"]))
        if channel is None or channel.deleted:
            raise r.DiscordError(r.UNKNOWN_CHANNEL)
        if not channel.guild.bot_is_member:
            raise r.DiscordError(r.MISSING_ACCESS, "the bot is not in this guild")
        require(self.fd, channel)
        return channel

    def _message(self, channel: Channel, request: web.Request) -> Message:
        msg = channel.messages.get(int(request.match_info["message"]))
        if msg is None or msg.deleted:
            raise r.DiscordError(r.UNKNOWN_MESSAGE)
        return msg

    def _render(self, msg: Message) -> dict[str, Any]:
        return payloads.message(self.fd, msg, content=self.fd.rest_sees_content(msg))

    async def channel(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        return r.ok(payloads.channel(channel, bot_id=self.fd.bot_user.id))

    async def history(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if not bot_permissions(self.fd, channel) & P.READ_MESSAGE_HISTORY:
            return r.ok([])
        q = request.query
        limit = max(1, min(int(q.get("limit", 50)), 100))
        live = channel.history()
        if "around" in q:
            around = int(q["around"])
            older = [m for m in live if m.id < around][-(limit // 2) :] if limit > 1 else []
            newer = [m for m in live if m.id >= around][: limit - len(older)]
            page = older + newer
        elif "before" in q:
            page = [m for m in live if m.id < int(q["before"])][-limit:]
        elif "after" in q:
            page = [m for m in live if m.id > int(q["after"])][:limit]
        else:
            page = live[-limit:]
        return r.ok([self._render(m) for m in reversed(page)])

    async def message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if not bot_permissions(self.fd, channel) & P.READ_MESSAGE_HISTORY:
            return r.error(r.MISSING_ACCESS, "no READ_MESSAGE_HISTORY")
        return r.ok(self._render(self._message(channel, request)))

    async def send(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        body, uploads = await self.fd.body(request)
        send_bit = P.SEND_MESSAGES_IN_THREADS if channel.is_thread else P.SEND_MESSAGES
        require(self.fd, channel, send_bit, *([P.ATTACH_FILES] if uploads else []))
        if channel.is_thread and channel.archived:
            channel.archived = False  # sending unarchives, as on Discord
        if not (
            body.get("content")
            or body.get("embeds")
            or uploads
            or body.get("components")
            or body.get("sticker_ids")
            or body.get("poll")
        ):
            return r.ok({"message": "Cannot send an empty message", "code": 50006}, 400)
        if body.get("embeds") and not bot_permissions(self.fd, channel) & P.EMBED_LINKS:
            body = {**body, "embeds": []}  # Discord drops them silently
        msg = new_bot_message(self.fd, channel, body, uploads)
        self.fd.store_message(msg)
        await self.fd.gateway.flush()
        return r.ok(self._render(msg))

    async def edit(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        msg = self._message(channel, request)
        if msg.author.id != self.fd.bot_user.id:
            return r.ok(
                {"message": "Cannot edit a message authored by another user", "code": 50005}, 403
            )
        body, uploads = await self.fd.body(request)
        apply_edit(self.fd, msg, body, uploads)
        self.fd.dispatch_message("MESSAGE_UPDATE", msg)
        await self.fd.message_edited_by_bot(msg)
        await self.fd.gateway.flush()
        return r.ok(self._render(msg))

    async def delete(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        msg = self._message(channel, request)
        if msg.author.id != self.fd.bot_user.id:
            require(self.fd, channel, P.MANAGE_MESSAGES)
        await self.fd.delete_message(msg)
        return r.no_content()

    async def typing(self, request: web.Request) -> web.Response:
        self._channel(request)
        return r.no_content()

    async def thread_member(self, request: web.Request) -> web.Response:
        """One member of a thread, or 404 Unknown Member (10007) when they are not in it."""
        channel = self._channel(request)
        user_id = int(request.match_info["user"])
        if not channel.is_thread or user_id not in channel.member_ids:
            raise r.DiscordError(r.UNKNOWN_MEMBER)
        return r.ok(payloads.thread_member(channel, user_id))

    def _archived(self, request: web.Request, threads: list[Channel]) -> web.Response:
        q = request.query
        limit = max(1, min(int(q.get("limit", 50)), 100))
        before = q.get("before")
        if before and before.isdigit():  # the joined-private listing pages by thread id
            threads = [t for t in threads if t.id < int(before)]
        elif before:
            cut = datetime.fromisoformat(before).timestamp()
            threads = [t for t in threads if t.archive_timestamp < cut]
        threads.sort(key=lambda t: t.archive_timestamp, reverse=True)
        page = threads[:limit]
        bot = self.fd.bot_user.id
        return r.ok(
            {
                "threads": [payloads.channel(t, bot_id=bot) for t in page],
                "members": [payloads.thread_member(t, bot) for t in page if bot in t.member_ids],
                "has_more": len(threads) > limit,
            }
        )

    def _children(self, channel: Channel, private: bool) -> list[Channel]:
        return [
            t
            for t in channel.guild.threads.values()
            if t.parent is channel and not t.deleted and t.archived and t.private == private
        ]

    async def archived_public(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        require(self.fd, channel, P.READ_MESSAGE_HISTORY)
        return self._archived(request, self._children(channel, private=False))

    async def archived_private(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        require(self.fd, channel, P.READ_MESSAGE_HISTORY, P.MANAGE_THREADS)
        return self._archived(request, self._children(channel, private=True))

    async def archived_joined(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        require(self.fd, channel, P.READ_MESSAGE_HISTORY)
        bot = self.fd.bot_user.id
        joined = [t for t in self._children(channel, private=True) if bot in t.member_ids]
        return self._archived(request, joined)
