"""The stand-in's world: users, guilds, roles, members, channels, threads, messages.

Objects here hold state only; turning them into Discord JSON is `payloads.py`'s job and
telling connected clients about changes is `FakeDiscord`'s. `Guild.add_*` methods take
`dispatch=` so a test can make a change "while the bot was offline".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .permissions import DEFAULT_EVERYONE, Overwrite, bits

if TYPE_CHECKING:
    from .cdn import Cdn
    from .server import FakeDiscord

TEXT, VOICE, CATEGORY, NEWS, PUBLIC_THREAD, PRIVATE_THREAD, STAGE = 0, 2, 4, 5, 11, 12, 13


@dataclass(eq=False)
class User:
    id: int
    name: str
    bot: bool = False
    global_name: str | None = None
    discriminator: str = "0"

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"


@dataclass(eq=False)
class Role:
    guild: Guild
    id: int
    name: str
    permissions: int = 0
    position: int = 0
    color: int = 0
    hoist: bool = False
    mentionable: bool = False
    bot_id: int | None = None  # set on the bot's managed role

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"


@dataclass(eq=False)
class Member:
    guild: Guild
    user: User
    roles: list[Role]
    joined_at: float
    nick: str | None = None

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def mention(self) -> str:
        return self.user.mention


@dataclass
class Attachment:
    """A file a member uploads with a message (or as a slash-command attachment option)."""

    filename: str
    data: bytes
    content_type: str | None = None
    description: str | None = None
    # False: a picture Discord could not measure. Its payload has no width and height, and the
    # media proxy refuses it (415), as it does any attachment without them.
    measured: bool = True


@dataclass(eq=False)
class StoredAttachment:
    id: int
    channel_id: int
    filename: str
    data: bytes
    content_type: str | None
    width: int | None
    height: int | None
    description: str | None
    cdn: Cdn = field(repr=False)
    ephemeral: bool = False
    animated: bool = False  # more than one frame: Discord's IS_ANIMATED attachment flag

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def url(self) -> str:
        """A freshly signed CDN URL (what Discord would hand out right now)."""
        return self.cdn.signed_url(self)


@dataclass(eq=False)
class Message:
    id: int
    channel: Channel
    author: User
    content: str = ""
    attachments: list[StoredAttachment] = field(default_factory=list)
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    type: int = 0
    flags: int = 0
    tts: bool = False
    edited_at: float | None = None
    mentions: list[User] = field(default_factory=list)
    mention_roles: list[int] = field(default_factory=list)
    mention_everyone: bool = False
    webhook_id: int | None = None
    application_id: int | None = None
    interaction: dict[str, Any] | None = None  # interaction_metadata for bot responses
    message_reference: dict[str, Any] | None = None
    deleted: bool = False

    @property
    def guild(self) -> Guild:
        return self.channel.guild


@dataclass(eq=False)
class Channel:
    """A text, voice or stage channel, a category, or a thread (`type` 11/12; `parent` is the
    text channel). Voice and stage channels hold messages too (their text chat)."""

    guild: Guild
    id: int
    name: str
    type: int = TEXT
    position: int = 0
    overwrites: list[Overwrite] = field(default_factory=list)
    nsfw: bool = False
    topic: str | None = None
    parent: Channel | None = None
    messages: dict[int, Message] = field(default_factory=dict, repr=False)
    deleted: bool = False
    # thread-only state
    owner_id: int | None = None
    member_ids: dict[int, float] = field(default_factory=dict)  # user id -> join time
    archived: bool = False
    locked: bool = False
    archive_timestamp: float = 0.0
    created_at: float = 0.0

    @property
    def is_thread(self) -> bool:
        return self.type in (PUBLIC_THREAD, PRIVATE_THREAD)

    @property
    def private(self) -> bool:
        return self.type == PRIVATE_THREAD

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def history(self) -> list[Message]:
        """Live messages, oldest first."""
        return sorted((m for m in self.messages.values() if not m.deleted), key=lambda m: m.id)

    @property
    def last_message_id(self) -> int | None:
        live = [m.id for m in self.messages.values() if not m.deleted]
        return max(live) if live else None


class Guild:
    def __init__(self, fd: FakeDiscord, guild_id: int, name: str, bot_permissions: int) -> None:
        self._fd = fd
        self.id = guild_id
        self.name = name
        self.roles: dict[int, Role] = {}
        self.channels: dict[int, Channel] = {}  # text channels and categories
        self.threads: dict[int, Channel] = {}
        self.members: dict[int, Member] = {}
        self.everyone = Role(self, guild_id, "@everyone", DEFAULT_EVERYONE)
        self.roles[guild_id] = self.everyone
        self.bot_role = self.add_role(fd.bot_user.name, bot_permissions, dispatch=False)
        self.bot_role.bot_id = fd.bot_user.id
        owner = fd._new_user("owner")
        self.owner_id = owner.id
        self._add(owner, [])
        self.bot_member: Member | None = self._add(fd.bot_user, [self.bot_role])

    def _add(self, user: User, roles: list[Role], nick: str | None = None) -> Member:
        member = Member(self, user, list(roles), self._fd.clock(), nick)
        self.members[user.id] = member
        return member

    @property
    def bot_is_member(self) -> bool:
        return self.bot_member is not None

    def add_role(
        self,
        name: str,
        permissions: int = 0,
        *,
        color: int = 0,
        hoist: bool = False,
        mentionable: bool = False,
        dispatch: bool = True,
    ) -> Role:
        role = Role(
            self,
            self._fd.ids.next(),
            name,
            bits(permissions),
            position=len(self.roles),
            color=color,
            hoist=hoist,
            mentionable=mentionable,
        )
        self.roles[role.id] = role
        if dispatch:
            self._fd._announce_role(role, "GUILD_ROLE_CREATE")
        return role

    def add_member(
        self,
        name: str,
        *,
        roles: list[Role] = (),
        bot: bool = False,
        nick: str | None = None,
        dispatch: bool = True,
    ) -> Member:
        member = self._add(self._fd._new_user(name, bot=bot), list(roles), nick)
        if dispatch:
            self._fd._announce_member(member, "GUILD_MEMBER_ADD")
        return member

    def add_existing_user(
        self, user: User, *, roles: list[Role] = (), dispatch: bool = True
    ) -> Member:
        """Make a user who is already in another guild a member here too."""
        member = self._add(user, list(roles))
        if dispatch:
            self._fd._announce_member(member, "GUILD_MEMBER_ADD")
        return member

    def _new_channel(self, name: str, kind: int, **kwargs: Any) -> Channel:
        channel = Channel(self, self._fd.ids.next(), name, kind, **kwargs)
        channel.created_at = self._fd.clock()
        self._fd.channels[channel.id] = channel
        return channel

    def add_text_channel(
        self,
        name: str,
        *,
        overwrites: list[Overwrite] = (),
        nsfw: bool = False,
        topic: str | None = None,
        category: Channel | None = None,
        news: bool = False,
        dispatch: bool = True,
    ) -> Channel:
        channel = self._new_channel(
            name,
            NEWS if news else TEXT,
            position=len(self.channels),
            overwrites=list(overwrites),
            nsfw=nsfw,
            topic=topic,
            parent=category,
        )
        self.channels[channel.id] = channel
        if dispatch:
            self._fd._announce_channel(channel, "CHANNEL_CREATE")
        return channel

    def add_voice_channel(
        self,
        name: str,
        *,
        stage: bool = False,
        overwrites: list[Overwrite] = (),
        category: Channel | None = None,
        dispatch: bool = True,
    ) -> Channel:
        """A voice channel (a stage channel with ``stage``), with its text chat."""
        channel = self._new_channel(
            name,
            STAGE if stage else VOICE,
            position=len(self.channels),
            overwrites=list(overwrites),
            parent=category,
        )
        self.channels[channel.id] = channel
        if dispatch:
            self._fd._announce_channel(channel, "CHANNEL_CREATE")
        return channel

    def add_category(
        self, name: str, *, overwrites: list[Overwrite] = (), dispatch: bool = True
    ) -> Channel:
        channel = self._new_channel(
            name, CATEGORY, position=len(self.channels), overwrites=list(overwrites)
        )
        self.channels[channel.id] = channel
        if dispatch:
            self._fd._announce_channel(channel, "CHANNEL_CREATE")
        return channel

    def add_thread(
        self,
        parent: Channel,
        name: str,
        *,
        private: bool = False,
        members: list[Member] = (),
        owner: Member | None = None,
        archived: bool = False,
        dispatch: bool = True,
    ) -> Channel:
        owner = owner or (members[0] if members else self.members[self.owner_id])
        thread = self._new_channel(
            name,
            PRIVATE_THREAD if private else PUBLIC_THREAD,
            parent=parent,
            owner_id=owner.id,
            archived=archived,
        )
        now = self._fd.clock()
        thread.archive_timestamp = now
        for member in [owner, *members]:
            thread.member_ids.setdefault(member.id, now)
        self.threads[thread.id] = thread
        if dispatch:
            self._fd._announce_thread_create(thread)
        return thread

    def member(self, who: Member | User | int) -> Member:
        user_id = who if isinstance(who, int) else who.id
        try:
            return self.members[user_id]
        except KeyError:
            raise LookupError(f"{who!r} is not a member of guild {self.name!r}") from None

    def text_channels(self) -> list[Channel]:
        return [c for c in self.channels.values() if c.type in (TEXT, NEWS) and not c.deleted]
