"""The soak's members and what they did on the Discord stand-in, kept as a ledger: for every
picture ever posted, whether the index must hold it at the end (``KEEP``) or must not, and why.

The ledger changes only when the stand-in has done what a member asked (a post dispatched, a
deletion dispatched, an opt-out answered as done), in one task, so each fact has a place in one
order (``seq``): a search asked after an opt-out was answered must not show that member.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.refs import embed_key
from tests.fakediscord import FakeDiscord
from tests.fakediscord.models import Channel, Guild, Member, Message

KEEP = "kept"
# Why a picture must not be stored (or cannot be): the soak's "forbidden" reasons.
DELETED = "message deleted"
EDITED_OUT = "edited out"
HIDDEN = "preview hidden"
OPTED_OUT = "author opted out"
POSTED_OPTED_OUT = "posted while opted out"
REFUSED = "hostile, refused"


@dataclass(eq=False)
class Poster:
    """A user who is a member of every soak server."""

    name: str
    members: dict[int, Member]  # guild id -> membership
    opted_out: bool = False
    # Bumped by each opt-out and opt-in: a message of an older epoch is left alone by edits (an
    # edit of a message posted before an opt-out would queue its pictures again).
    epoch: int = 0

    @property
    def user_id(self) -> int:
        return next(iter(self.members.values())).id


@dataclass(eq=False)
class Picture:
    key: int  # the attachment id, or the embed key (bot/refs.py) of a link preview
    kind: str  # "attachment" or "embed"
    fate: str = KEEP
    hostile: str | None = None  # which hostile input it is, if one


@dataclass(eq=False)
class Posted:
    message: Message
    author: Poster
    epoch: int
    pictures: list[Picture] = field(default_factory=list)
    deleted_seq: int | None = None  # when the deletion was dispatched

    @property
    def alive(self) -> bool:
        return self.deleted_seq is None

    def shown(self) -> list[Picture]:
        """The pictures the message still shows (neither edited out nor hidden)."""
        return [p for p in self.pictures if p.fate not in (EDITED_OUT, HIDDEN)]


class Ledger:
    """Everything posted, and the facts that decide what the index may hold."""

    def __init__(self) -> None:
        self.seq = 0
        self.posts: dict[int, Posted] = {}
        # user id -> seq ranges (start, end or None) during which the member was opted out
        self.opt_outs: dict[int, list[list[int | None]]] = {}

    def tick(self) -> int:
        self.seq += 1
        return self.seq

    def posted(self, message: Message, author: Poster, pictures: list[Picture]) -> Posted:
        self.tick()
        if author.opted_out:
            for picture in pictures:
                if picture.fate == KEEP:
                    picture.fate = POSTED_OPTED_OUT
        post = Posted(message, author, author.epoch, pictures)
        self.posts[message.id] = post
        return post

    def added(self, post: Posted, pictures: list[Picture]) -> None:
        """Pictures an edit added to ``post``."""
        self.tick()
        for picture in pictures:
            if post.author.opted_out:
                picture.fate = POSTED_OPTED_OUT
            post.pictures.append(picture)

    def removed(self, post: Posted, keys: set[int], *, why: str) -> None:
        self.tick()
        for picture in post.pictures:
            if picture.key in keys:
                picture.fate = why

    def deleted(self, post: Posted) -> None:
        post.deleted_seq = self.tick()
        for picture in post.pictures:
            if picture.fate not in (EDITED_OUT, HIDDEN, REFUSED):
                picture.fate = DELETED

    def opted_out(self, poster: Poster) -> None:
        """The member's opt-out was answered as done: everything of theirs goes."""
        seq = self.tick()
        poster.opted_out, poster.epoch = True, poster.epoch + 1
        self.opt_outs.setdefault(poster.user_id, []).append([seq, None])
        for post in self.posts.values():
            if post.author is poster:
                for picture in post.pictures:
                    if picture.fate == KEEP:
                        picture.fate = OPTED_OUT

    def opted_in(self, poster: Poster) -> None:
        seq = self.tick()
        poster.opted_out, poster.epoch = False, poster.epoch + 1
        self.opt_outs[poster.user_id][-1][1] = seq

    def was_opted_out(self, user_id: int, seq: int) -> bool:
        return any(
            start <= seq and (end is None or seq < end)
            for start, end in self.opt_outs.get(user_id, [])
        )

    def must_not_show(self, message_id: int, *, asked_seq: int) -> str | None:
        """Why a search asked at ``asked_seq`` must not show this message; None if it may."""
        post = self.posts.get(message_id)
        if post is None:
            return None
        if post.deleted_seq is not None and post.deleted_seq <= asked_seq:
            return DELETED
        if self.was_opted_out(post.author.user_id, asked_seq):
            return OPTED_OUT
        return None

    def fates(self) -> dict[tuple[int, int], tuple[str, str | None]]:
        """(message id, image key) -> (fate, hostile kind) of every picture ever posted."""
        return {
            (message_id, picture.key): (picture.fate, picture.hostile)
            for message_id, post in self.posts.items()
            for picture in post.pictures
        }


def attachment_pictures(message: Message, *, hostile: str | None = None) -> list[Picture]:
    return [Picture(a.id, "attachment", hostile=hostile) for a in message.attachments]


def embed_pictures(embeds: list[dict], *, hostile: str | None = None) -> list[Picture]:
    return [Picture(embed_key(e["thumbnail"]["url"]), "embed", hostile=hostile) for e in embeds]


@dataclass
class World:
    """The soak's servers on the stand-in: each with two channels, every poster in each."""

    fd: FakeDiscord
    guilds: list[Guild]
    channels: list[Channel]
    posters: list[Poster]
    mallory: Poster  # posts the hostile inputs; never edits, deletes or opts out

    @classmethod
    def build(cls, fd: FakeDiscord, *, servers: int, members: int) -> World:
        guilds = [fd.add_guild(f"soak {i}") for i in range(servers)]
        channels = [g.add_text_channel(name) for g in guilds for name in ("memes", "art")]
        names = [f"member{i}" for i in range(members)] + ["mallory"]
        posters = []
        for name in names:
            first = guilds[0].add_member(name)
            joined = {guilds[0].id: first}
            for guild in guilds[1:]:
                joined[guild.id] = guild.add_existing_user(first.user)
            posters.append(Poster(name, joined))
        return cls(fd, guilds, channels, posters[:-1], posters[-1])
