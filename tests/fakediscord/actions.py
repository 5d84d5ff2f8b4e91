"""What members do: post messages, run commands, press buttons.

Mixed into FakeDiscord. Members can only do what Discord's client would let them: post
where they may send, run commands they can see, press enabled components of messages
they can see; anything else raises, so a test that asks for the impossible fails loudly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from . import payloads
from .commands import CHAT_INPUT, MESSAGE, USER
from .interactions import (
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    MESSAGE_COMPONENT,
    FakeInteraction,
    OptionBuilder,
)
from .messages import EPHEMERAL, custom_ids, find_component
from .models import Attachment, Channel, Guild, Member, Message, User
from .permissions import P, channel_permissions, guild_permissions

_ROLE_MENTION = re.compile(r"<@&(\d+)>")


class MemberActions:
    def _member_message(
        self,
        channel: Channel,
        author: Member | User,
        content: str,
        attachments: Sequence[Attachment],
        embeds: Sequence[dict[str, Any]],
        at: float | datetime | None,
    ) -> Message:
        guild = channel.guild
        member = guild.member(author)
        if isinstance(at, datetime):
            at = at.timestamp()
        msg = Message(
            self.ids.next(at), channel, member.user, content, embeds=[dict(e) for e in embeds]
        )
        msg.attachments = [self.cdn.store(channel.id, a) for a in attachments]
        msg.mentions = self.parse_user_mentions(content, guild)
        msg.mention_roles = [
            int(x) for x in _ROLE_MENTION.findall(content) if int(x) in guild.roles
        ]
        perms = channel_permissions(channel, member)
        msg.mention_everyone = "@everyone" in content and bool(perms & P.MENTION_EVERYONE)
        return msg

    async def post_message(
        self,
        channel: Channel,
        author: Member | User,
        content: str = "",
        *,
        attachments: Sequence[Attachment] = (),
        embeds: Sequence[dict[str, Any]] = (),
        delayed_embeds: bool = False,
    ) -> Message:
        """A member posts now: stored in history and sent as MESSAGE_CREATE.

        `delayed_embeds=True` mimics link unfurling: MESSAGE_CREATE arrives without the
        embeds and a MESSAGE_UPDATE adds them a moment later, as Discord does for links.
        """
        member = channel.guild.member(author)
        send = P.SEND_MESSAGES_IN_THREADS if channel.is_thread else P.SEND_MESSAGES
        perms = channel_permissions(channel, member)
        if not perms & P.VIEW_CHANNEL or not perms & send:
            raise PermissionError(f"{member.name} cannot post in #{channel.name}")
        msg = self._member_message(
            channel, member, content, attachments, () if delayed_embeds else embeds, None
        )
        self.store_message(msg)
        if delayed_embeds and embeds:
            await self.flush()
            msg.embeds = [dict(e) for e in embeds]
            self.dispatch_message("MESSAGE_UPDATE", msg)
        await self.flush()
        return msg

    def add_history_message(
        self,
        channel: Channel,
        author: Member | User,
        content: str = "",
        *,
        attachments: Sequence[Attachment] = (),
        embeds: Sequence[dict[str, Any]] = (),
        at: float | datetime | None = None,
    ) -> Message:
        """A message posted while no client listened: in history, never dispatched.

        `at` backdates it (its snowflake and timestamp follow).
        """
        msg = self._member_message(channel, author, content, attachments, embeds, at)
        self.store_message(msg, dispatch=False)
        return msg

    # -- interactions ------------------------------------------------------------------

    def _check_can_use(self, cmd: dict[str, Any], channel: Channel, member: Member) -> None:
        required = cmd.get("default_member_permissions")
        if required is not None:
            have = guild_permissions(channel.guild, member)
            if int(required) & ~have:
                raise PermissionError(
                    f"Discord hides /{cmd['name']} from {member.name}: needs permissions {required}"
                )

    async def _start(
        self,
        kind: int,
        channel: Channel,
        member: Member | User,
        data: dict[str, Any],
        source: Message | None = None,
    ) -> FakeInteraction:
        member = channel.guild.member(member)
        perms = channel_permissions(channel, member)
        if not perms & P.VIEW_CHANNEL or not perms & P.USE_APPLICATION_COMMANDS:
            raise PermissionError(f"{member.name} cannot use app commands in #{channel.name}")
        inter = FakeInteraction(self, kind, channel.guild, channel, member, data, source)
        self.interactions[inter.id] = inter
        self.interactions_by_token[inter.token] = inter
        # Discord sends an interaction to the connection of its guild's shard.
        sessions = self.gateway.for_guild(channel.guild.id)
        if not sessions:
            raise RuntimeError(
                f"no client is connected to receive INTERACTION_CREATE for guild {channel.guild.id}"
            )
        sessions[-1].send(0, inter.payload(), "INTERACTION_CREATE")
        await self.flush()
        return inter

    def _command(self, name: str, kind: int, guild: Guild) -> dict[str, Any]:
        cmd = self.commands.find(name, kind, guild.id)
        if cmd is None:
            raise LookupError(
                f"no synced command {name!r} of type {kind} for guild {guild.id}; "
                f"synced: {self.commands.names(guild.id)} (did the bot tree.sync()?)"
            )
        return cmd

    async def invoke_slash(
        self,
        guild: Guild,
        channel: Channel,
        member: Member | User,
        name: str | Sequence[str],
        options: dict[str, Any] | None = None,
    ) -> FakeInteraction:
        """A member runs a slash command; `name` may be a path like ("clipfind", "channels",
        "exclude") or "clipfind channels exclude" for subcommands."""
        data = self._slash_data(guild, channel, member, name, options, None)
        return await self._start(APPLICATION_COMMAND, channel, member, data)

    async def autocomplete(
        self,
        guild: Guild,
        channel: Channel,
        member: Member | User,
        name: str | Sequence[str],
        options: dict[str, Any],
        focused: str,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> list[dict[str, Any]]:
        """A member types into option `focused`; returns the choices the bot offered."""
        data = self._slash_data(guild, channel, member, name, options, focused)
        inter = await self._start(AUTOCOMPLETE, channel, member, data)
        await inter.wait_acknowledged(timeout)
        return inter.callbacks[0].get("data", {}).get("choices", [])

    def _slash_data(
        self,
        guild: Guild,
        channel: Channel,
        member: Member | User,
        name: str | Sequence[str],
        options: dict[str, Any] | None,
        focused: str | None,
    ) -> dict[str, Any]:
        path = tuple(name.split()) if isinstance(name, str) else tuple(name)
        cmd = self._command(path[0], CHAT_INPUT, guild)
        member = guild.member(member)
        self._check_can_use(cmd, channel, member)
        builder = OptionBuilder(self, guild, channel, member, focused)
        data: dict[str, Any] = {
            "id": cmd["id"],
            "name": cmd["name"],
            "type": CHAT_INPUT,
            "options": builder.command(cmd, path, options or {}),
        }
        if builder.resolved:
            data["resolved"] = builder.resolved
        if "guild_id" in cmd:
            data["guild_id"] = cmd["guild_id"]
        return data

    async def _context(
        self,
        kind: int,
        guild: Guild,
        channel: Channel,
        member: Member | User,
        name: str,
        target_id: int,
        resolved: dict[str, Any],
    ) -> FakeInteraction:
        cmd = self._command(name, kind, guild)
        member = guild.member(member)
        self._check_can_use(cmd, channel, member)
        data = {
            "id": cmd["id"],
            "name": name,
            "type": kind,
            "target_id": str(target_id),
            "resolved": resolved,
        }
        if "guild_id" in cmd:
            data["guild_id"] = cmd["guild_id"]
        return await self._start(APPLICATION_COMMAND, channel, member, data)

    async def invoke_message_command(
        self,
        guild: Guild,
        channel: Channel,
        member: Member | User,
        name: str,
        target: Message | dict[str, Any],
    ) -> FakeInteraction:
        """A member picks a message context-menu command on `target`."""
        msg = self.stored_message(target)
        resolved = {"messages": {str(msg.id): payloads.message(self, msg)}}
        return await self._context(MESSAGE, guild, channel, member, name, msg.id, resolved)

    async def invoke_user_command(
        self,
        guild: Guild,
        channel: Channel,
        member: Member | User,
        name: str,
        target: Member | User,
    ) -> FakeInteraction:
        builder = OptionBuilder(self, guild, channel, guild.member(member))
        target_id = int(builder.add_user(target))
        return await self._context(USER, guild, channel, member, name, target_id, builder.resolved)

    def stored_message(self, ref: Message | dict[str, Any] | int) -> Message:
        if isinstance(ref, Message):
            return ref
        msg_id = int(ref["id"]) if isinstance(ref, dict) else int(ref)
        msg = self.messages_by_id.get(msg_id)
        if msg is None or msg.deleted:
            raise LookupError(f"message {msg_id} does not exist (or was deleted)")
        return msg

    async def click(
        self,
        message: Message | dict[str, Any] | int,
        custom_id: str,
        member: Member | User,
        *,
        values: Sequence[Any] | None = None,
    ) -> FakeInteraction:
        """A member presses a button (or picks `values` in a select) on a bot message."""
        msg = self.stored_message(message)
        comp = find_component(msg.components, custom_id)
        if comp is None:
            raise LookupError(
                f"no component {custom_id!r} on message {msg.id}; "
                f"custom_ids: {custom_ids(msg.components)}"
            )
        if comp.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled; Discord would not send it")
        member = msg.guild.member(member)
        owner = (msg.interaction or {}).get("user", {}).get("id")
        if msg.flags & EPHEMERAL and owner != str(member.id):
            raise PermissionError("only the member who ran the command sees this ephemeral message")
        data: dict[str, Any] = {
            "custom_id": custom_id,
            "component_type": comp["type"],
            "id": comp.get("id"),
        }
        if comp["type"] in (3, 5, 6, 7, 8):
            data["values"] = [str(v.id) if hasattr(v, "id") else v for v in values or []]
        return await self._start(MESSAGE_COMPONENT, msg.channel, member, data, source=msg)
