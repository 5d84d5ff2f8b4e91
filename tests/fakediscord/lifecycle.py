"""Changes to the world after setup, told to connected clients as Discord tells them.

Every method takes `dispatch=False` for a change made while the bot was offline: state
changes, no event is sent, and the bot only finds out through REST (or never).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import payloads
from .gateway import GUILD_MEMBERS, GUILD_PRESENCES, Session
from .messages import EPHEMERAL
from .models import Attachment, Channel, Guild, Member, Message, Role
from .payloads import SUPPRESS_EMBEDS
from .permissions import Overwrite, bits

_UNSET: Any = object()


class Lifecycle:
    """Mixed into FakeDiscord."""

    # -- announcements used by Guild.add_* ----------------------------------------------

    def _announce_guild_create(self, guild: Guild) -> None:
        def build(session: Session) -> dict[str, Any]:
            full = session.has(GUILD_PRESENCES) and session.has(GUILD_MEMBERS)
            return payloads.guild_create(self, guild, all_members=full, joined=True)

        if guild.bot_is_member:
            self.gateway.dispatch("GUILD_CREATE", build)

    def _announce_role(self, role: Role, event: str) -> None:
        if role.guild.bot_is_member:
            self.gateway.dispatch(
                event, {"guild_id": str(role.guild.id), "role": payloads.role(role)}
            )

    def _announce_member(self, member: Member, event: str) -> None:
        guild = member.guild
        if not guild.bot_is_member:
            return
        data = {**payloads.member(member), "guild_id": str(guild.id)}
        if event == "GUILD_MEMBER_UPDATE" and member.id == self.bot_user.id:
            # A bot always hears about its own member, intent or not.
            for session in self.gateway.for_guild(guild.id):
                session.send(0, data, event)
            return
        self.gateway.dispatch(event, data)

    def _announce_channel(self, channel: Channel, event: str) -> None:
        if channel.guild.bot_is_member:
            self.gateway.dispatch(event, payloads.channel(channel))

    def _announce_thread_create(self, thread: Channel, *, new: bool = True) -> None:
        if not self.bot_can_view(thread):
            return
        data = payloads.channel(thread, bot_id=self.bot_user.id)
        if new:
            data["newly_created"] = True
        self.gateway.dispatch("THREAD_CREATE", data)

    # -- messages ----------------------------------------------------------------------

    async def delete_message(
        self, message: Message | dict[str, Any] | int, *, dispatch: bool = True
    ) -> None:
        """MESSAGE_DELETE; the message's attachment URLs stop working at once."""
        msg = self.stored_message(message)
        visible = self.bot_can_view(msg.channel) and not msg.flags & EPHEMERAL
        self._forget_message(msg)
        if dispatch and visible:
            self.gateway.dispatch(
                "MESSAGE_DELETE",
                {
                    "id": str(msg.id),
                    "channel_id": str(msg.channel.id),
                    "guild_id": str(msg.guild.id),
                },
            )
        await self.flush()

    def _forget_message(self, msg: Message) -> None:
        msg.deleted = True
        for att in msg.attachments:
            self.cdn.forget(att)

    async def bulk_delete(
        self, channel: Channel, messages: Sequence[Message], *, dispatch: bool = True
    ) -> None:
        """MESSAGE_DELETE_BULK for `messages` of one channel."""
        for msg in messages:
            self._forget_message(msg)
        if dispatch and self.bot_can_view(channel):
            self.gateway.dispatch(
                "MESSAGE_DELETE_BULK",
                {
                    "ids": [str(m.id) for m in messages],
                    "channel_id": str(channel.id),
                    "guild_id": str(channel.guild.id),
                },
            )
        await self.flush()

    async def edit_message(
        self,
        message: Message,
        *,
        content: str = _UNSET,
        attachments: Sequence[Any] = _UNSET,
        embeds: Sequence[dict[str, Any]] = _UNSET,
        dispatch: bool = True,
    ) -> Message:
        """The author edits: MESSAGE_UPDATE with the full message.

        `attachments` lists what remains: kept `StoredAttachment`s (e.g. `msg.attachments[1:]`
        to remove the first) and/or new `Attachment`s.
        """
        if content is not _UNSET:
            message.content = content
            message.mentions = self.parse_user_mentions(content, message.guild)
        if embeds is not _UNSET:
            message.embeds = [dict(e) for e in embeds]
        if attachments is not _UNSET:
            kept = []
            for att in attachments:
                if isinstance(att, Attachment):
                    kept.append(self.cdn.store(message.channel.id, att))
                else:
                    kept.append(att)
            for att in message.attachments:
                if att not in kept:
                    self.cdn.forget(att)
            message.attachments = kept
        message.edited_at = self.clock()
        if dispatch:
            self.dispatch_message("MESSAGE_UPDATE", message)
        await self.flush()
        return message

    async def suppress_embeds(
        self, message: Message, *, suppressed: bool = True, dispatch: bool = True
    ) -> Message:
        """The author (or a moderator) hides the link previews: flag SUPPRESS_EMBEDS, and
        Discord sends the message without embeds from then on. `suppressed=False` shows them
        again."""
        if suppressed:
            message.flags |= SUPPRESS_EMBEDS
        else:
            message.flags &= ~SUPPRESS_EMBEDS
        if dispatch:
            self.dispatch_message("MESSAGE_UPDATE", message)
        await self.flush()
        return message

    # -- channels and threads ----------------------------------------------------------

    async def delete_channel(self, channel: Channel, *, dispatch: bool = True) -> None:
        """CHANNEL_DELETE (THREAD_DELETE for a thread); its messages and threads go too."""
        if channel.is_thread:
            await self.delete_thread(channel, dispatch=dispatch)
            return
        for thread in [t for t in channel.guild.threads.values() if t.parent is channel]:
            await self.delete_thread(thread, dispatch=False)
        for msg in channel.messages.values():
            self._forget_message(msg)
        channel.deleted = True
        if dispatch and channel.guild.bot_is_member:
            self.gateway.dispatch("CHANNEL_DELETE", payloads.channel(channel))
        await self.flush()

    async def delete_thread(self, thread: Channel, *, dispatch: bool = True) -> None:
        visible = self.bot_can_view(thread)
        for msg in thread.messages.values():
            self._forget_message(msg)
        thread.deleted = True
        if dispatch and visible:
            self.gateway.dispatch(
                "THREAD_DELETE",
                {
                    "id": str(thread.id),
                    "guild_id": str(thread.guild.id),
                    "parent_id": str(thread.parent.id),
                    "type": thread.type,
                },
            )
        await self.flush()

    async def archive_thread(
        self, thread: Channel, *, archived: bool = True, locked: bool = False, dispatch: bool = True
    ) -> None:
        """THREAD_UPDATE; archived threads leave the client cache and GUILD_CREATE."""
        thread.archived, thread.locked = archived, locked
        thread.archive_timestamp = self.clock()
        if dispatch and self.bot_can_view(thread):
            data = payloads.channel(thread, bot_id=self.bot_user.id)
            self.gateway.dispatch("THREAD_UPDATE", data)
        await self.flush()

    async def add_thread_members(
        self, thread: Channel, members: Sequence[Member], *, dispatch: bool = True
    ) -> None:
        now = self.clock()
        for m in members:
            thread.member_ids.setdefault(m.id, now)
        bot_added = any(m.id == self.bot_user.id for m in members)
        if dispatch and bot_added:
            self._announce_thread_create(thread, new=False)
        if dispatch:
            added = [
                {
                    **payloads.thread_member(thread, m.id),
                    "member": payloads.member(m),
                    "presence": None,
                }
                for m in members
            ]
            self._thread_members_update(thread, added, [], bot_added)
        await self.flush()

    async def remove_thread_members(
        self, thread: Channel, members: Sequence[Member], *, dispatch: bool = True
    ) -> None:
        bot_removed = any(m.id == self.bot_user.id for m in members)
        # A bot removed from a private thread can no longer see it, but still hears this.
        visible = self.bot_can_view(thread)
        for m in members:
            thread.member_ids.pop(m.id, None)
        if dispatch and visible:
            self._thread_members_update(thread, [], [str(m.id) for m in members], bot_removed)
        await self.flush()

    def _thread_members_update(
        self, thread: Channel, added: list[dict[str, Any]], removed: list[str], about_bot: bool
    ) -> None:
        data = {
            "id": str(thread.id),
            "guild_id": str(thread.guild.id),
            "member_count": min(len(thread.member_ids), 50),
            "added_members": added,
            "removed_member_ids": removed,
        }
        # Without GUILD_MEMBERS only changes involving the bot itself arrive.
        self.gateway.dispatch(
            "THREAD_MEMBERS_UPDATE", lambda s: data if about_bot or s.has(GUILD_MEMBERS) else None
        )

    async def update_channel_overwrites(
        self, channel: Channel, overwrites: Sequence[Overwrite], *, dispatch: bool = True
    ) -> None:
        """CHANNEL_UPDATE with the new permission overwrites."""
        channel.overwrites = list(overwrites)
        if dispatch:
            self._announce_channel(channel, "CHANNEL_UPDATE")
        await self.flush()

    # -- guilds, members, roles --------------------------------------------------------

    async def remove_bot_from_guild(self, guild: Guild, *, dispatch: bool = True) -> None:
        """GUILD_DELETE without `unavailable`: kicked or left; REST then answers 403."""
        if guild.bot_member is None:
            return
        guild.members.pop(self.bot_user.id, None)
        guild.bot_member = None
        if dispatch:
            self.gateway.dispatch("GUILD_DELETE", {"id": str(guild.id)})
        await self.flush()

    async def add_bot_to_guild(self, guild: Guild, *, dispatch: bool = True) -> None:
        """The bot joins (again): GUILD_CREATE."""
        if guild.bot_member is None:
            guild.bot_member = guild._add(self.bot_user, [guild.bot_role])
        if dispatch:
            self._announce_guild_create(guild)
        await self.flush()

    async def remove_member(self, guild: Guild, member: Member, *, dispatch: bool = True) -> None:
        """GUILD_MEMBER_REMOVE (left, kicked or banned)."""
        guild.members.pop(member.id, None)
        if dispatch and guild.bot_is_member:
            self.gateway.dispatch(
                "GUILD_MEMBER_REMOVE",
                {"guild_id": str(guild.id), "user": payloads.user(member.user)},
            )
        await self.flush()

    async def update_member_roles(
        self, guild: Guild, member: Member, roles: Sequence[Role], *, dispatch: bool = True
    ) -> None:
        """GUILD_MEMBER_UPDATE with the member's new role list."""
        member.roles = list(roles)
        if dispatch:
            self._announce_member(member, "GUILD_MEMBER_UPDATE")
        await self.flush()

    async def update_role(
        self,
        role: Role,
        *,
        permissions: int | None = None,
        name: str | None = None,
        dispatch: bool = True,
    ) -> None:
        """GUILD_ROLE_UPDATE (e.g. @everyone losing View Channel)."""
        if permissions is not None:
            role.permissions = bits(permissions)
        if name is not None:
            role.name = name
        if dispatch:
            self._announce_role(role, "GUILD_ROLE_UPDATE")
        await self.flush()

    def expire_attachment_links(self) -> None:
        """Every attachment URL handed out so far now gets 404 (as when `ex` passes);
        URLs read afresh (REST, refresh-urls, new events) work."""
        self.cdn.expire_links()
