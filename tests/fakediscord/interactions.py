"""Interactions a member starts (slash command, context menu, button or select), and what
the bot answered to each.

Option values are typed from the command the client synced, as Discord types them: a
member or user becomes a user option with `resolved.users`/`members`, a channel a channel
option with `resolved.channels`, an `Attachment` an attachment option on the CDN.
Values Discord's own picker would refuse (unknown option, missing required one, wrong
type, outside choices or bounds) raise ValueError here, so a broken test is loud.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import payloads
from .messages import LOADING
from .models import Attachment, Channel, Guild, Member, Message, Role, User
from .permissions import channel_permissions

if TYPE_CHECKING:
    from .server import FakeDiscord

APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE = 2, 3, 4
SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = (
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
)
TOKEN_TTL = 15 * 60


class FakeInteraction:
    """One interaction and everything the bot sent for it.

    `callbacks`: callback bodies in order; `deferred`: the first callback was type 5 or 6;
    `messages`: every message this interaction produced (original first), as dicts.
    """

    def __init__(
        self,
        fd: FakeDiscord,
        kind: int,
        guild: Guild,
        channel: Channel,
        member: Member,
        data: dict[str, Any],
        source: Message | None = None,
    ) -> None:
        self.fd = fd
        self.id = fd.ids.next()
        self.token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
        self.type = kind
        self.guild, self.channel, self.member, self.data = guild, channel, member, data
        self.source = source  # the message whose component was used
        self.created = fd.clock()
        self.callbacks: list[dict[str, Any]] = []
        self.response_type: int | None = None
        self.original: Message | None = None  # what @original refers to
        self.followups: list[Message] = []
        self.produced: list[Message] = []  # original/source and follow-ups, first shown first
        self.token_revoked = False
        self._shown: list[Message] = []  # visible results, most recently changed last
        self._changed = asyncio.Condition()

    @property
    def deferred(self) -> bool:
        return self.response_type in (5, 6)

    @property
    def acknowledged(self) -> bool:
        return self.response_type is not None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [payloads.message(self.fd, m) for m in self.produced]

    def token_valid(self) -> bool:
        return not self.token_revoked and self.fd.clock() - self.created < TOKEN_TTL

    def expire_token(self) -> None:
        """Make webhook calls with this token fail as they do after 15 minutes."""
        self.token_revoked = True

    async def acknowledged_now(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_acknowledged(self, timeout: float = 10) -> int:  # noqa: ASYNC109
        """Wait for the callback (whatever its type); returns the callback type."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.acknowledged), timeout)
        return self.response_type

    async def shown(self, msg: Message) -> None:
        """Record that the member now sees `msg` (new, edited, or no longer loading)."""
        if msg not in self.produced:
            self.produced.append(msg)
        if msg.flags & LOADING:
            return
        if msg in self._shown:
            self._shown.remove(msg)
        self._shown.append(msg)
        async with self._changed:
            self._changed.notify_all()

    async def wait_reply(
        self,
        timeout: float = 30,  # noqa: ASYNC109 - promised API
        predicate: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The message the member sees as the answer (the newest one shown), as a dict.

        Answers: a type-4 or type-7 callback, or a deferral followed by an edit of
        @original or a follow-up. With `predicate`, waits for a shown message it accepts
        (for bots that first show progress, then the result).
        """

        def pick() -> dict[str, Any] | None:
            for msg in reversed(self._shown):
                if msg.deleted:
                    continue
                data = payloads.message(self.fd, msg)
                if predicate is None or predicate(data):
                    return data
            return None

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: pick() is not None), timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"no reply to interaction {self.id} within {timeout}s; callbacks so far: "
                    f"{self.callbacks!r}"
                ) from None
        return pick()

    def payload(self) -> dict[str, Any]:
        g, c, m = self.guild, self.channel, self.member
        data: dict[str, Any] = {
            "id": str(self.id),
            "application_id": str(self.fd.application_id),
            "type": self.type,
            "data": self.data,
            "guild_id": str(g.id),
            "guild": {"id": str(g.id), "locale": "en-US", "features": []},
            "channel_id": str(c.id),
            "channel": payloads.interaction_channel(self.fd, c, m),
            "member": payloads.member(m, permissions=channel_permissions(c, m)),
            "token": self.token,
            "version": 1,
            "app_permissions": str(channel_permissions(c, g.bot_member)),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(g.id)},
            "context": 0,
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        if self.source is not None:
            data["message"] = payloads.message(self.fd, self.source)
        return data

    def metadata(self) -> dict[str, Any]:
        """`interaction_metadata` of messages this interaction creates."""
        meta: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "user": payloads.user(self.member.user),
            "authorizing_integration_owners": {"0": str(self.guild.id)},
        }
        if self.type == APPLICATION_COMMAND:
            meta["name"] = self.data["name"]
            meta["command_type"] = self.data["type"]
            if "target_id" in self.data:
                meta["target_message_id"] = self.data["target_id"]
        else:
            meta["interacted_message_id"] = str(self.source.id)
        if self.original is not None and self.source is None:
            meta["original_response_message_id"] = str(self.original.id)
        return meta


class OptionBuilder:
    """Turns test-friendly values into typed options plus `resolved` for one command."""

    def __init__(
        self,
        fd: FakeDiscord,
        guild: Guild,
        channel: Channel,
        member: Member,
        focused: str | None = None,
    ) -> None:
        self.fd, self.guild, self.channel, self.member = fd, guild, channel, member
        self.resolved: dict[str, dict[str, Any]] = {}
        # Autocomplete: the member is still typing `focused`, so nothing is validated yet.
        self.focused = focused

    def command(
        self, cmd: dict[str, Any], path: tuple[str, ...], values: dict[str, Any]
    ) -> list[dict[str, Any]]:
        schema = cmd.get("options", [])
        for name in path[1:]:
            sub = next(
                (
                    o
                    for o in schema
                    if o["name"] == name and o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)
                ),
                None,
            )
            if sub is None:
                raise ValueError(f"/{' '.join(path)}: no subcommand {name!r} in {cmd['name']!r}")
            schema = sub.get("options", [])
        if any(o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP) for o in schema):
            raise ValueError(f"/{' '.join(path)} needs a subcommand: {[o['name'] for o in schema]}")
        options = self.values(schema, values, "/" + " ".join(path))
        for name in reversed(path[1:]):
            kind = SUB_COMMAND if name == path[-1] else SUB_COMMAND_GROUP
            options = [{"type": kind, "name": name, "options": options}]
        return options

    def values(
        self, schema: list[dict[str, Any]], values: dict[str, Any], where: str
    ) -> list[dict[str, Any]]:
        known = {o["name"]: o for o in schema}
        out = []
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"{where}: no option {name!r}; options are {sorted(known)}")
            if name == self.focused:
                out.append(
                    {
                        "name": name,
                        "type": known[name]["type"],
                        "value": str(value),
                        "focused": True,
                    }
                )
                continue
            out.append(
                {
                    "name": name,
                    "type": known[name]["type"],
                    "value": self._convert(known[name], value, f"{where} {name}"),
                }
            )
        missing = [o["name"] for o in schema if o.get("required") and o["name"] not in values]
        if missing and self.focused is None:
            raise ValueError(f"{where}: required option(s) {missing} missing")
        return out

    def _convert(self, opt: dict[str, Any], value: Any, where: str) -> Any:
        kind = opt["type"]
        if kind == STRING:
            self._check(isinstance(value, str), where, value)
            lo, hi = opt.get("min_length", 0), opt.get("max_length", 6000)
            self._check(lo <= len(value) <= hi, where, value, f"length not in [{lo}, {hi}]")
        elif kind == INTEGER:
            self._check(isinstance(value, int) and not isinstance(value, bool), where, value)
        elif kind == NUMBER:
            number = isinstance(value, int | float) and not isinstance(value, bool)
            self._check(number, where, value)
        elif kind == BOOLEAN:
            self._check(isinstance(value, bool), where, value)
        if kind in (INTEGER, NUMBER):
            lo, hi = opt.get("min_value"), opt.get("max_value")
            self._check(
                (lo is None or value >= lo) and (hi is None or value <= hi),
                where,
                value,
                f"outside [{lo}, {hi}]",
            )
        if opt.get("choices"):
            self._check(value in [c["value"] for c in opt["choices"]], where, value, "not a choice")
        if kind in (STRING, INTEGER, NUMBER, BOOLEAN):
            return value
        return self._resolve(kind, opt, value, where)

    @staticmethod
    def _check(ok: bool, where: str, value: Any, why: str = "wrong type") -> None:
        if not ok:
            raise ValueError(f"{where}: {value!r} refused ({why})")

    def _resolve(self, kind: int, opt: dict[str, Any], value: Any, where: str) -> str:
        if kind in (USER, MENTIONABLE) and isinstance(value, Member | User):
            return self.add_user(value)
        if kind in (ROLE, MENTIONABLE) and isinstance(value, Role):
            self.resolved.setdefault("roles", {})[str(value.id)] = payloads.role(value)
            return str(value.id)
        if kind == CHANNEL and isinstance(value, Channel):
            allowed = opt.get("channel_types")
            self._check(not allowed or value.type in allowed, where, value, "channel type")
            self.resolved.setdefault("channels", {})[str(value.id)] = self._channel(value)
            return str(value.id)
        if kind == ATTACHMENT and isinstance(value, Attachment):
            att = self.fd.cdn.store(self.channel.id, value, ephemeral=True)
            self.resolved.setdefault("attachments", {})[str(att.id)] = payloads.attachment(att)
            return str(att.id)
        raise ValueError(f"{where}: {value!r} refused (wrong type for option type {kind})")

    def add_user(self, who: Member | User) -> str:
        user = who.user if isinstance(who, Member) else who
        self.resolved.setdefault("users", {})[str(user.id)] = payloads.user(user)
        member = self.guild.members.get(user.id)
        if member is not None:
            self.resolved.setdefault("members", {})[str(user.id)] = payloads.member(
                member, with_user=False, permissions=channel_permissions(self.channel, member)
            )
        return str(user.id)

    def _channel(self, c: Channel) -> dict[str, Any]:
        data = {
            "id": str(c.id),
            "name": c.name,
            "type": c.type,
            "permissions": str(channel_permissions(c, self.member)),
            "flags": 0,
        }
        if c.is_thread:
            full = payloads.channel(c)
            data.update(
                {
                    k: full[k]
                    for k in (
                        "parent_id",
                        "thread_metadata",
                        "owner_id",
                        "member_count",
                        "message_count",
                    )
                }
            )
        else:
            data["parent_id"] = str(c.parent.id) if c.parent else None
        return data
