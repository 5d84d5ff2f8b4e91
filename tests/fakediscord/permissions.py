"""Permission bits and Discord's documented resolution algorithm.

The stand-in computes permissions itself (for interaction payloads, REST access checks
and which events a bot may see) instead of asking discord.py, so a test comparing the two
really checks something.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag
from typing import Any


class Permission(IntFlag):
    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_AUDIT_LOG = 1 << 7
    PRIORITY_SPEAKER = 1 << 8
    STREAM = 1 << 9
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    SEND_TTS_MESSAGES = 1 << 12
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    VIEW_GUILD_INSIGHTS = 1 << 19
    CONNECT = 1 << 20
    SPEAK = 1 << 21
    MUTE_MEMBERS = 1 << 22
    DEAFEN_MEMBERS = 1 << 23
    MOVE_MEMBERS = 1 << 24
    USE_VAD = 1 << 25
    CHANGE_NICKNAME = 1 << 26
    MANAGE_NICKNAMES = 1 << 27
    MANAGE_ROLES = 1 << 28
    MANAGE_WEBHOOKS = 1 << 29
    MANAGE_GUILD_EXPRESSIONS = 1 << 30
    USE_APPLICATION_COMMANDS = 1 << 31
    REQUEST_TO_SPEAK = 1 << 32
    MANAGE_EVENTS = 1 << 33
    MANAGE_THREADS = 1 << 34
    CREATE_PUBLIC_THREADS = 1 << 35
    CREATE_PRIVATE_THREADS = 1 << 36
    USE_EXTERNAL_STICKERS = 1 << 37
    SEND_MESSAGES_IN_THREADS = 1 << 38
    USE_EMBEDDED_ACTIVITIES = 1 << 39
    MODERATE_MEMBERS = 1 << 40
    VIEW_CREATOR_MONETIZATION_ANALYTICS = 1 << 41
    USE_SOUNDBOARD = 1 << 42
    CREATE_GUILD_EXPRESSIONS = 1 << 43
    CREATE_EVENTS = 1 << 44
    USE_EXTERNAL_SOUNDS = 1 << 45
    SEND_VOICE_MESSAGES = 1 << 46
    SET_VOICE_CHANNEL_STATUS = 1 << 48
    SEND_POLLS = 1 << 49
    USE_EXTERNAL_APPS = 1 << 50
    PIN_MESSAGES = 1 << 51
    BYPASS_SLOWMODE = 1 << 52


P = Permission
ALL = int(sum(Permission))

# What a fresh guild's @everyone role gets.
DEFAULT_EVERYONE = int(
    P.CREATE_INSTANT_INVITE
    | P.ADD_REACTIONS
    | P.STREAM
    | P.VIEW_CHANNEL
    | P.SEND_MESSAGES
    | P.EMBED_LINKS
    | P.ATTACH_FILES
    | P.READ_MESSAGE_HISTORY
    | P.MENTION_EVERYONE
    | P.USE_EXTERNAL_EMOJIS
    | P.CONNECT
    | P.SPEAK
    | P.USE_VAD
    | P.CHANGE_NICKNAME
    | P.USE_APPLICATION_COMMANDS
    | P.REQUEST_TO_SPEAK
    | P.CREATE_PUBLIC_THREADS
    | P.CREATE_PRIVATE_THREADS
    | P.USE_EXTERNAL_STICKERS
    | P.SEND_MESSAGES_IN_THREADS
    | P.USE_EMBEDDED_ACTIVITIES
    | P.USE_SOUNDBOARD
    | P.USE_EXTERNAL_SOUNDS
    | P.SEND_VOICE_MESSAGES
    | P.SEND_POLLS
    | P.USE_EXTERNAL_APPS
)

# What the bot's managed role gets unless a test says otherwise: enough to index and answer.
DEFAULT_BOT = int(
    P.VIEW_CHANNEL
    | P.SEND_MESSAGES
    | P.SEND_MESSAGES_IN_THREADS
    | P.EMBED_LINKS
    | P.ATTACH_FILES
    | P.READ_MESSAGE_HISTORY
    | P.USE_APPLICATION_COMMANDS
)

ROLE, MEMBER = 0, 1


def bits(value: Any) -> int:
    """An int bitfield from an int, a Permission flag or a discord.Permissions."""
    return int(getattr(value, "value", value))


@dataclass
class Overwrite:
    """A channel permission overwrite; `target` is a Role, a Member, or a raw id with `type`."""

    target: Any
    allow: int = 0
    deny: int = 0
    type: int | None = None

    def __post_init__(self) -> None:
        self.allow, self.deny = bits(self.allow), bits(self.deny)

    @property
    def id(self) -> int:
        return self.target if isinstance(self.target, int) else self.target.id

    @property
    def kind(self) -> int:
        if self.type is not None:
            return self.type
        return MEMBER if hasattr(self.target, "user") else ROLE

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.kind,
            "allow": str(int(self.allow)),
            "deny": str(int(self.deny)),
        }


def guild_permissions(guild: Any, member: Any) -> int:
    if member.id == guild.owner_id:
        return ALL
    perms = guild.everyone.permissions
    for role in member.roles:
        perms |= role.permissions
    if perms & P.ADMINISTRATOR:
        return ALL
    return perms


def _apply_overwrites(perms: int, channel: Any, member: Any) -> int:
    guild = channel.guild
    overwrites = list(channel.overwrites)
    everyone = next((o for o in overwrites if o.kind == ROLE and o.id == guild.id), None)
    if everyone is not None:
        perms = (perms & ~everyone.deny) | everyone.allow
    role_ids = {r.id for r in member.roles}
    allow = deny = 0
    for ow in overwrites:
        if ow.kind == ROLE and ow.id in role_ids:
            allow |= ow.allow
            deny |= ow.deny
    perms = (perms & ~deny) | allow
    for ow in overwrites:
        if ow.kind == MEMBER and ow.id == member.id:
            perms = (perms & ~ow.deny) | ow.allow
    return perms


def _implicit(perms: int, send_bit: int) -> int:
    if not perms & P.VIEW_CHANNEL:
        return 0
    if not perms & send_bit:
        perms &= ~int(P.SEND_TTS_MESSAGES | P.MENTION_EVERYONE | P.EMBED_LINKS | P.ATTACH_FILES)
    return perms


def channel_permissions(channel: Any, member: Any) -> int:
    """Computed permissions of `member` in `channel` (text channel, category or thread)."""
    if channel.is_thread:
        parent_perms = channel_permissions(channel.parent, member)
        if (
            channel.private
            and not (parent_perms & P.MANAGE_THREADS)
            and member.id not in channel.member_ids
        ):
            return 0
        return _implicit(parent_perms, P.SEND_MESSAGES_IN_THREADS)
    base = guild_permissions(channel.guild, member)
    if base == ALL:
        return ALL
    return _implicit(_apply_overwrites(base, channel, member), P.SEND_MESSAGES)


def can_view(channel: Any, member: Any) -> bool:
    return bool(channel_permissions(channel, member) & P.VIEW_CHANNEL)
