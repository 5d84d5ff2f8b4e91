"""REST routes for the client itself, the application, commands and guilds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from . import payloads
from . import responses as r
from .models import Channel, Guild
from .permissions import P, channel_permissions

if TYPE_CHECKING:
    from .server import FakeDiscord

API = "/api/v10"


class CoreRoutes:
    def __init__(self, fd: FakeDiscord) -> None:
        self.fd = fd

    def routes(self) -> list[web.AbstractRouteDef]:
        cmds = API + "/applications/{app}/commands"
        guild_cmds = API + "/applications/{app}/guilds/{guild}/commands"
        return [
            web.get(API + "/users/@me", self.me),
            web.get(API + "/users/@me/guilds", self.my_guilds),
            web.get(API + "/users/{user}", self.user),
            web.get(API + "/oauth2/applications/@me", self.application),
            web.get(API + "/applications/@me", self.application),
            web.get(API + "/gateway", self.gateway),
            web.get(API + "/gateway/bot", self.gateway_bot),
            web.put(cmds, self.put_commands),
            web.get(cmds, self.get_commands),
            web.post(cmds, self.post_command),
            web.put(guild_cmds, self.put_commands),
            web.get(guild_cmds, self.get_commands),
            web.post(guild_cmds, self.post_command),
            web.get(API + "/guilds/{guild}", self.guild),
            web.get(API + "/guilds/{guild}/channels", self.guild_channels),
            web.get(API + "/guilds/{guild}/roles", self.guild_roles),
            web.get(API + "/guilds/{guild}/members", self.members),
            web.get(API + "/guilds/{guild}/members/{user}", self.member),
            web.get(API + "/guilds/{guild}/threads/active", self.active_threads),
            web.post(API + "/attachments/refresh-urls", self.refresh_urls),
        ]

    async def me(self, request: web.Request) -> web.Response:
        return r.ok(payloads.me(self.fd))

    async def user(self, request: web.Request) -> web.Response:
        user = self.fd.users.get(int(request.match_info["user"]))
        return r.ok(payloads.user(user)) if user else r.error(r.UNKNOWN_USER)

    async def my_guilds(self, request: web.Request) -> web.Response:
        out = []
        for g in self.fd.guilds.values():
            if g.bot_is_member:
                perms = g.everyone.permissions
                for role in g.bot_member.roles:
                    perms |= role.permissions
                out.append(
                    {
                        "id": str(g.id),
                        "name": g.name,
                        "icon": None,
                        "banner": None,
                        "owner": False,
                        "permissions": str(perms),
                        "features": [],
                    }
                )
        return r.ok(out)

    async def application(self, request: web.Request) -> web.Response:
        return r.ok(payloads.application(self.fd))

    async def gateway(self, request: web.Request) -> web.Response:
        return r.ok({"url": self.fd.gateway_url})

    async def gateway_bot(self, request: web.Request) -> web.Response:
        fd = self.fd
        return r.ok(
            {
                "url": fd.gateway_url,
                "shards": fd.recommended_shards,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 14_400_000,
                    "max_concurrency": fd.max_concurrency,
                },
            }
        )

    def _scope(self, request: web.Request) -> int | None:
        if request.match_info["app"] != str(self.fd.application_id):
            raise r.DiscordError(r.MISSING_ACCESS, "not this application's id")
        guild = request.match_info.get("guild")
        if guild is not None:
            self._guild(request)
            return int(guild)
        return None

    async def put_commands(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        body, _ = await self.fd.body(request)
        if not isinstance(body, list):
            return r.invalid_form("expected a list of commands")
        return r.ok(self.fd.commands.put(scope, body))

    async def post_command(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        body, _ = await self.fd.body(request)
        current = [
            c
            for c in self.fd.commands.get(scope)
            if (c["name"], c["type"]) != (body["name"], body.get("type", 1))
        ]
        stored = self.fd.commands.put(scope, [*current, body])
        return r.ok(stored[-1], 201)

    async def get_commands(self, request: web.Request) -> web.Response:
        return r.ok(self.fd.commands.get(self._scope(request)))

    def _guild(self, request: web.Request) -> Guild:
        guild = self.fd.guilds.get(int(request.match_info["guild"]))
        if guild is None:
            raise r.DiscordError(r.UNKNOWN_GUILD)
        if not guild.bot_is_member:
            raise r.DiscordError(r.MISSING_ACCESS, "the bot is not in this guild")
        return guild

    async def guild(self, request: web.Request) -> web.Response:
        g = self._guild(request)
        data = payloads.guild(g)
        if request.query.get("with_counts") in ("1", "true", "True"):
            data.update(
                {"approximate_member_count": len(g.members), "approximate_presence_count": 0}
            )
        return r.ok(data)

    async def guild_channels(self, request: web.Request) -> web.Response:
        g = self._guild(request)
        return r.ok([payloads.channel(c) for c in g.channels.values() if not c.deleted])

    async def guild_roles(self, request: web.Request) -> web.Response:
        return r.ok([payloads.role(x) for x in self._guild(request).roles.values()])

    async def members(self, request: web.Request) -> web.Response:
        g = self._guild(request)
        if not self.fd.members_enabled:
            return r.error(r.MISSING_ACCESS, "the GUILD_MEMBERS intent is off in the portal")
        after = int(request.query.get("after", 0))
        limit = min(int(request.query.get("limit", 1)), 1000)
        found = sorted((m for m in g.members.values() if m.id > after), key=lambda m: m.id)
        return r.ok([payloads.member(m) for m in found[:limit]])

    async def member(self, request: web.Request) -> web.Response:
        g = self._guild(request)
        m = g.members.get(int(request.match_info["user"]))
        return r.ok(payloads.member(m)) if m else r.error(r.UNKNOWN_MEMBER)

    async def active_threads(self, request: web.Request) -> web.Response:
        g = self._guild(request)
        bot = self.fd.bot_user.id
        threads = [
            t
            for t in g.threads.values()
            if not t.deleted and not t.archived and self.fd.bot_can_view(t)
        ]
        members = [payloads.thread_member(t, bot) for t in threads if bot in t.member_ids]
        return r.ok(
            {
                "threads": [payloads.channel(t, bot_id=bot) for t in threads],
                "members": members,
                "has_more": False,
            }
        )

    async def refresh_urls(self, request: web.Request) -> web.Response:
        body, _ = await self.fd.body(request)
        out = [
            {"original": url, "refreshed": self.fd.cdn.refresh(url) or url}
            for url in body.get("attachment_urls", [])
        ]
        return r.ok({"refreshed_urls": out})


def bot_permissions(fd: FakeDiscord, channel: Channel) -> int:
    member = channel.guild.bot_member
    return 0 if member is None else channel_permissions(channel, member)


def require(fd: FakeDiscord, channel: Channel, *bits: int) -> None:
    perms = bot_permissions(fd, channel)
    if not perms & P.VIEW_CHANNEL:
        raise r.DiscordError(r.MISSING_ACCESS, f"the bot cannot view #{channel.name}")
    missing = [P(b).name for b in bits if not perms & b]
    if missing:
        raise r.DiscordError(r.MISSING_PERMISSIONS, f"the bot lacks {missing} in #{channel.name}")
