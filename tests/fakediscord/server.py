"""`FakeDiscord`: the loopback server and the API tests drive it with."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from . import payloads
from . import responses as r
from .actions import MemberActions
from .cdn import Cdn, Fault, probe_image
from .channels import ChannelRoutes
from .commands import CommandRegistry
from .gateway import (
    GUILD_MEMBERS,
    GUILD_PRESENCES,
    HEARTBEAT_INTERVAL_MS,
    MAX_GUILDS_PER_SHARD,
    MESSAGE_CONTENT,
    Gateway,
    Identify,
    Session,
    shard_of,
)
from .ids import Clock, Snowflakes
from .interactions import FakeInteraction
from .lifecycle import Lifecycle
from .media import IS_ANIMATED, is_animated
from .messages import EPHEMERAL, Upload, read_body
from .models import Channel, Guild, Message, User
from .permissions import DEFAULT_BOT, bits, can_view
from .rest import CoreRoutes
from .webhooks import WebhookRoutes

log = logging.getLogger("tests.fakediscord")

API = "/api/v10"
_WEBHOOK_PATH = re.compile(r"^/api/v10/(interactions/|webhooks/\d+/[^/]+)")
_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
# Application flags for an unverified bot with the intent toggled on in the portal.
FLAG_PRESENCE_LIMITED, FLAG_MEMBERS_LIMITED, FLAG_CONTENT_LIMITED = 1 << 13, 1 << 15, 1 << 19


@dataclass
class RecordedRequest:
    method: str
    path: str  # below /api/v10, e.g. "/channels/123/messages"
    query: dict[str, str]
    json: Any = None
    files: list[str] = field(default_factory=list)


RECORD = web.RequestKey("record", RecordedRequest)


@dataclass
class Route:
    """REST calls by ``method`` to the paths (after /api/v10) the regex ``path`` matches whole:
    what a rule that slows, holds or rate-limits calls applies to."""

    method: str
    path: re.Pattern[str]

    def matches(self, record: RecordedRequest) -> bool:
        return record.method == self.method and self.path.fullmatch(record.path) is not None


@dataclass
class Slow(Route):
    """REST calls matching a route answered ``seconds`` late."""

    seconds: float


@dataclass
class RateLimit(Route):
    """REST calls matching a route answered 429 with ``retry_after`` (seconds) until lifted."""

    retry_after: float
    answered: int = 0  # 429s sent so far

    def response(self) -> web.Response:
        # As Discord sends it: the body discord.py reads, and the Via header it takes for proof
        # that the 429 is Discord's rather than Cloudflare's.
        self.answered += 1
        body = {"message": "You are being rate limited.", "retry_after": self.retry_after}
        response = r.ok({**body, "global": False}, 429)
        response.headers.update(
            {
                "Retry-After": f"{self.retry_after:g}",
                "X-RateLimit-Scope": "user",
                "Via": "1.1 google",
            }
        )
        return response


@dataclass
class Hold(Route):
    """REST calls matching a route answered as usual for the first ``after``, then held until
    `release()`: a client caught at a known point, whatever the machine's speed."""

    after: int
    passed: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.released.set()

    async def wait(self) -> None:
        if self.passed < self.after:
            self.passed += 1
        else:
            await self.released.wait()


class FakeDiscord(Lifecycle, MemberActions):
    def __init__(
        self,
        *,
        message_content_enabled: bool = True,
        members_enabled: bool = True,
        presences_enabled: bool = False,
        bot_name: str = "clipfind",
        initial_response_timeout: float | None = 3.0,
        recommended_shards: int = 1,
        max_concurrency: int = 1,
        max_guilds_per_shard: int = MAX_GUILDS_PER_SHARD,
        clock: Callable[[], float] = time.time,
        heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS,
    ) -> None:
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.message_content_enabled = message_content_enabled
        self.members_enabled = members_enabled
        self.presences_enabled = presences_enabled
        self.initial_response_timeout = initial_response_timeout
        # What GET /gateway/bot answers: the shard count Discord recommends and how many
        # IDENTIFYs it allows per 5 s (one per bucket shard_id % max_concurrency).
        self.recommended_shards = recommended_shards
        self.max_concurrency = max_concurrency
        self.max_guilds_per_shard = max_guilds_per_shard
        self.clock = Clock(clock)
        self.ids = Snowflakes(self.clock)
        self.users: dict[int, User] = {}
        self.bot_user = self._new_user(bot_name, bot=True)
        self.bot_user.discriminator = "4821"
        self.application_id = self.bot_user.id
        self.owner_user = self._new_user("app-owner")
        # Shaped like a real token: base64(bot id).timestamp.hmac
        encoded_id = base64.b64encode(str(self.bot_user.id).encode()).decode().rstrip("=")
        self.token = f"{encoded_id}.{secrets.token_urlsafe(4)}.{secrets.token_urlsafe(27)}"
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages_by_id: dict[int, Message] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self.interactions_by_token: dict[str, FakeInteraction] = {}
        self.requests: list[RecordedRequest] = []
        self._slow: list[Slow] = []
        self._holds: list[Hold] = []
        self.rate_limits: list[RateLimit] = []
        self.unknown_routes: list[str] = []
        self.cdn = Cdn(self.clock, self.ids)
        self.gateway = Gateway(self)
        self.commands = CommandRegistry(self.application_id, self.ids)
        self.api_base = self.gateway_url = self.base_url = ""
        self._bot_messages = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # -- lifecycle of the server -------------------------------------------------------

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.add_routes([web.get("/gateway", self.gateway.handle)])
        for part in (self.cdn, WebhookRoutes(self), CoreRoutes(self), ChannelRoutes(self)):
            app.add_routes(part.routes())
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        # Long request lines: an attachment's link holds its file name, which may be long.
        self._runner = web.AppRunner(
            app, shutdown_timeout=1.0, access_log=None, max_line_size=65536
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = self.cdn.base = f"http://127.0.0.1:{port}"
        self.api_base = self.base_url + API
        self.gateway_url = f"ws://127.0.0.1:{port}/gateway"

    @property
    def cdn_origin(self) -> str:
        """The CDN's origin, the one a client may download media from (its external image host
        shares it: a test of a foreign host runs a server of its own)."""
        return self.cdn.base

    async def close(self) -> None:
        self.cdn.closing.set()
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.unknown_routes:
            log.error(
                "fakediscord: the client called routes the stand-in lacks: %s",
                sorted(set(self.unknown_routes)),
            )

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> Any:
        if request.path.startswith(API + "/"):
            record = RecordedRequest(request.method, request.path[len(API) :], dict(request.query))
            self.requests.append(record)
            request[RECORD] = record
            for slow in self._slow:
                if slow.matches(record):
                    await asyncio.sleep(slow.seconds)
            for hold in self._holds:
                if hold.matches(record):
                    await hold.wait()
            for limit in self.rate_limits:
                if limit.matches(record):
                    return limit.response()
            auth = request.headers.get("Authorization")
            if not _WEBHOOK_PATH.match(request.path) and auth != f"Bot {self.token}":
                return r.error(r.UNAUTHORIZED)
        try:
            return await handler(request)
        except r.DiscordError as exc:
            return exc.response()

    async def _unknown(self, request: web.Request) -> web.Response:
        body = await request.text()
        route = f"{request.method} {request.path}"
        self.unknown_routes.append(route)
        log.error(
            "fakediscord: no such route %s (query %s, body %.300s); add it to "
            "tests/fakediscord if the bot needs it",
            route,
            dict(request.query),
            body,
        )
        return r.error(r.NOT_FOUND, f"fakediscord has no route {route}")

    async def body(self, request: web.Request) -> tuple[Any, list[Upload]]:
        payload, uploads = await read_body(request)
        record = request.get(RECORD)
        if record is not None:
            record.json, record.files = payload, [u.filename for u in uploads]
        return payload, uploads

    # -- what the client is told ------------------------------------------------------

    @property
    def application_flags(self) -> int:
        return (
            (FLAG_PRESENCE_LIMITED if self.presences_enabled else 0)
            | (FLAG_MEMBERS_LIMITED if self.members_enabled else 0)
            | (FLAG_CONTENT_LIMITED if self.message_content_enabled else 0)
        )

    def enabled_privileged_intents(self) -> int:
        return (
            (GUILD_PRESENCES if self.presences_enabled else 0)
            | (GUILD_MEMBERS if self.members_enabled else 0)
            | (MESSAGE_CONTENT if self.message_content_enabled else 0)
        )

    @property
    def identify_payloads(self) -> list[dict[str, Any]]:
        return self.gateway.identify_payloads

    @property
    def identifies(self) -> list[Identify]:
        """Every accepted IDENTIFY with its time (time.monotonic()) and shard, in order."""
        return self.gateway.identifies

    @property
    def synced_commands(self) -> dict[int | None, list[dict[str, Any]]]:
        """Commands as last PUT: key None for global ones, a guild id for guild ones."""
        return {scope: self.commands.get(scope) for scope in self.commands.scopes}

    async def wait_ready(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - promised API
        """Wait until a client identified and received READY and every GUILD_CREATE."""

        def ready() -> bool:
            return any(s.ready and not s.ws.closed for s in self.gateway.sessions)

        async with self.gateway.ready_changed:
            try:
                await asyncio.wait_for(self.gateway.ready_changed.wait_for(ready), timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"no client became ready within {timeout}s; IDENTIFY "
                    f"payloads so far: {self.identify_payloads}"
                ) from None

    async def flush(self) -> None:
        """Wait until every event produced so far was written to every client."""
        await self.gateway.flush()

    def sent_sequences(self) -> dict[str, int]:
        """The sequence number of the last event written to each open gateway session, by its
        session id: a client whose websocket's `sequence` has reached it has parsed them all."""
        return {s.session_id: s.seq for s in self.gateway.sessions if not s.ws.closed}

    async def reconnect_clients(self) -> None:
        """Send op 7 RECONNECT; clients come back through RESUME -> INVALID_SESSION -> IDENTIFY."""
        for session in self.gateway.connected():
            session.send(7, None)
        await self.flush()

    # -- setup -------------------------------------------------------------------------

    def _new_user(self, name: str, *, bot: bool = False) -> User:
        user = User(self.ids.next(), name, bot=bot)
        self.users[user.id] = user
        return user

    def add_guild(
        self,
        name: str = "Test guild",
        *,
        bot_permissions: int = DEFAULT_BOT,
        shard: tuple[int, int] | None = None,
        dispatch: bool = True,
    ) -> Guild:
        """A guild with the bot in it; `shard=(id, count)` gives it an id on that shard."""
        if shard is None:
            guild_id = self.ids.spread()
        else:
            shard_id, count = shard
            guild_id = self.ids.spread(lambda ms: ms % count == shard_id)
        guild = Guild(self, guild_id, name, bits(bot_permissions))
        self.guilds[guild.id] = guild
        if dispatch:
            self._announce_guild_create(guild)
        return guild

    @staticmethod
    def shard_of(guild: Guild, shard_count: int) -> int:
        """The shard Discord sends the guild's events to."""
        return shard_of(guild.id, shard_count)

    def slow_down(self, method: str, path: str, seconds: float) -> None:
        """REST calls matching `method` and the regex `path` (after /api/v10) answer late."""
        self._slow.append(Slow(method, re.compile(path), seconds))

    def hold(self, method: str, path: str, *, after: int = 0) -> Hold:
        """REST calls matching `method` and the regex `path` (after /api/v10) are answered for
        the first `after`, then held until the returned `Hold` is released."""
        hold = Hold(method, re.compile(path), after)
        self._holds.append(hold)
        return hold

    def rate_limit(self, method: str, path: str, *, retry_after: float) -> RateLimit:
        """REST calls matching `method` and the regex `path` (after /api/v10) answer 429 with
        `retry_after` until `lift_rate_limits()`; the returned rule counts its 429s."""
        limit = RateLimit(method, re.compile(path), retry_after)
        self.rate_limits.append(limit)
        return limit

    def lift_rate_limits(self) -> None:
        self.rate_limits.clear()

    def advance_clock(self, seconds: float) -> None:
        """Move the stand-in's clock (interaction tokens and attachment links expire by it)."""
        self.clock.advance(seconds)

    def host_external_image(self, name: str, data: bytes, content_type: str) -> str:
        """Serve bytes from a non-Discord host on this server; returns its URL."""
        return self.cdn.host(name, data, content_type)

    def rehost_external_image(self, url: str, data: bytes, content_type: str) -> None:
        """The linked site swaps its picture: its URL serves ``data`` from now on, while
        Discord's proxied copy (an embed's `proxy_url`) keeps the picture it unfurled."""
        self.cdn.rehost(url, data, content_type)

    def set_cdn_fault(self, url: str, **spec: Any) -> Fault:
        """Make one URL misbehave; see `cdn.Fault` (delay, fail_first, content_type, ...)."""
        return self.cdn.set_fault(url, **spec)

    def image_embed(
        self, url: str, *, rich: bool = False, title: str | None = None, proxied: bool = True
    ) -> dict[str, Any]:
        """The embed Discord unfurls for a linked picture.

        A bare image link becomes `type: "image"` with the picture in `thumbnail`, not
        `image`; `rich=True` gives a rich embed with the picture in `image` instead.
        The picture's `proxy_url` is the CDN's `/external/<token>`, serving the bytes hosted
        here under `url` (or following a `redirect_to` fault set on `url`); `proxied=False`
        leaves it out, as for a picture Discord holds no copy of.
        """
        width = height = None
        flags = 0
        path = url[len(self.base_url) :] if url.startswith(self.base_url) else None
        hosted = self.cdn.external.get(unquote(path)) if path else None
        if hosted is not None:
            _, width, height = probe_image(hosted[0])
            flags = IS_ANIMATED if is_animated(hosted[0]) else 0
        media: dict[str, Any] = {
            "url": url,
            "width": width or 0,
            "height": height or 0,
            "flags": flags,
        }
        if proxied:
            media["proxy_url"] = self.cdn.external_proxy_url(url)
        if rich:
            return {"type": "rich", "title": title, "image": media, "content_scan_version": 0}
        return {"type": "image", "url": url, "thumbnail": media, "content_scan_version": 0}

    # -- messages ----------------------------------------------------------------------

    def parse_user_mentions(self, content: str, guild: Guild) -> list[User]:
        ids = dict.fromkeys(int(x) for x in _USER_MENTION.findall(content))
        return [self.users[i] for i in ids if i in self.users]

    def bot_can_view(self, channel: Channel) -> bool:
        bot = channel.guild.bot_member
        return bot is not None and not channel.deleted and can_view(channel, bot)

    def content_exempt(self, msg: Message) -> bool:
        bot = self.bot_user
        return msg.author.id == bot.id or any(u.id == bot.id for u in msg.mentions)

    def rest_sees_content(self, msg: Message) -> bool:
        return self.message_content_enabled or self.content_exempt(msg)

    def dispatch_message(self, event: str, msg: Message) -> None:
        if msg.flags & EPHEMERAL or not self.bot_can_view(msg.channel):
            return
        full = payloads.message(self, msg, gateway=True)
        blank = payloads.message(self, msg, gateway=True, content=False)
        exempt = self.content_exempt(msg)

        def choose(session: Session) -> dict[str, Any]:
            return full if exempt or session.has(MESSAGE_CONTENT) else blank

        self.gateway.dispatch(event, choose)

    def store_message(self, msg: Message, *, dispatch: bool = True) -> None:
        self.messages_by_id[msg.id] = msg
        if not msg.flags & EPHEMERAL:
            msg.channel.messages[msg.id] = msg
        if dispatch:
            self.dispatch_message("MESSAGE_CREATE", msg)
        if msg.author.id == self.bot_user.id:
            with contextlib.suppress(RuntimeError):  # no loop yet: nobody can be waiting
                asyncio.get_running_loop().create_task(self._notify_bot_message())

    async def _notify_bot_message(self) -> None:
        async with self._bot_messages:
            self._bot_messages.notify_all()

    async def message_edited_by_bot(self, msg: Message) -> None:
        """A bot may answer a button by editing the message over REST instead of the
        interaction webhook; the member sees that too."""
        for inter in self.interactions.values():
            if msg is inter.source or msg in inter.produced:
                await inter.shown(msg)

    def messages_in(self, channel: Channel) -> list[dict[str, Any]]:
        """The channel's history as full payloads, oldest first."""
        return [payloads.message(self, m) for m in channel.history()]

    async def wait_for_message(
        self,
        predicate: Callable[[Message], bool] | None = None,
        *,
        channel: Channel | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> Message:
        """Wait for a message the bot sent (channel message, response or follow-up)."""

        def find() -> Message | None:
            for msg in self.messages_by_id.values():
                if (
                    msg.author.id == self.bot_user.id
                    and not msg.deleted
                    and (channel is None or msg.channel is channel)
                    and (predicate is None or predicate(msg))
                ):
                    return msg
            return None

        async with self._bot_messages:
            await asyncio.wait_for(self._bot_messages.wait_for(lambda: find() is not None), timeout)
        return find()
