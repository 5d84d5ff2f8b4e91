"""Who reads an answer posted in a channel, and which channels' images it may therefore show.

An ephemeral answer is read by the member who asked; a public one by everyone who can view the
channel it is posted in. An image from channel S may appear in a public answer in channel D only
if **every** member who can view D can also read S (View Channel and Read Message History, and
Connect for the text chat of a voice or stage channel).

Members are not all cached (the members intent is not asked for), so this is decided from the
permission overwrites of D and S and the server's roles alone, for every combination of roles a
member could hold. Discord resolves a bit for a member as: a member overwrite decides; else any of
their roles' overwrites allowing it grants it; else any denying it removes it; else the @everyone
overwrite decides; else the base permissions of their roles. Each of those steps only asks whether
the member's roles meet or avoid some set of roles, so "some member can view D but not read S" is
a small satisfiability question over such sets, answered exactly here (property-tested against the
stand-in's own implementation of Discord's algorithm, and against discord.py's `permissions_for`
on the channels the bot gets, whose raw overwrites may allow and deny one bit). Members named in
an overwrite of D or S are treated as holding any roles at all, which can only leave an image out,
never let one in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import product

import discord

VIEW = 1 << 10  # View Channel
HISTORY = 1 << 16  # Read Message History
# A voice or stage channel's text chat is shown only to those who may join it (Discord's
# permission documentation: lacking Connect there implicitly denies the rest).
CONNECT = 1 << 20
ADMINISTRATOR = 1 << 3

Pair = tuple[int, int]  # (allow, deny)
# One way to meet a condition: roles the member must hold none of, and sets of roles from each of
# which they must hold at least one.
Clause = tuple[frozenset[int], tuple[frozenset[int], ...]]


@dataclass(frozen=True)
class Rules:
    """A channel's permission overwrites: @everyone's, per role and per member."""

    everyone: Pair = (0, 0)
    roles: Mapping[int, Pair] = None  # type: ignore[assignment]
    members: Mapping[int, Pair] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", dict(self.roles or {}))
        object.__setattr__(self, "members", dict(self.members or {}))


@dataclass(frozen=True)
class Roles:
    """The server's roles: @everyone's permissions and every other role's."""

    everyone: int
    others: Mapping[int, int]

    def having(self, bit: int) -> frozenset[int]:
        return frozenset(r for r, perms in self.others.items() if perms & bit)


def _grants(rules: Rules, roles: Roles, bit: int, member: Pair | None) -> list[Clause]:
    """The ways a member's roles can give them ``bit`` in a channel with these rules."""
    if member is not None and member[0] & bit:
        return [(frozenset(), ())]
    if member is not None and member[1] & bit:  # administrators are above overwrites
        return [(frozenset(), (roles.having(ADMINISTRATOR),))]
    allowing = frozenset(r for r, (allow, _) in rules.roles.items() if allow & bit)
    denying = frozenset(r for r, (_, deny) in rules.roles.items() if deny & bit)
    clauses: list[Clause] = [(frozenset(), (roles.having(ADMINISTRATOR) | allowing,))]
    everyone_allow, everyone_deny = rules.everyone
    if everyone_allow & bit or (not everyone_deny & bit and roles.everyone & bit):
        clauses.append((denying, ()))
    elif not everyone_deny & bit:
        clauses.append((denying, (roles.having(bit),)))
    return clauses


def _withholds(rules: Rules, roles: Roles, bit: int, member: Pair | None) -> list[Clause]:
    """The ways a member's roles can leave them without ``bit``: the negation of _grants."""
    if member is not None and member[0] & bit:
        return []
    if member is not None and member[1] & bit:
        return [(roles.having(ADMINISTRATOR), ())]
    allowing = frozenset(r for r, (allow, _) in rules.roles.items() if allow & bit)
    denying = frozenset(r for r, (_, deny) in rules.roles.items() if deny & bit)
    never = roles.having(ADMINISTRATOR) | allowing
    clauses: list[Clause] = [(never, (denying,))]
    everyone_allow, everyone_deny = rules.everyone
    if everyone_deny & bit and not everyone_allow & bit:
        clauses.append((never, ()))
    elif not everyone_allow & bit and not everyone_deny & bit and not roles.everyone & bit:
        clauses.append((never | roles.having(bit), ()))
    return clauses


def _satisfiable(clauses: Iterable[Clause], roles: Roles) -> bool:
    """Whether some set of the server's roles meets all the clauses at once.

    Holding a role is only ever required or forbidden, never both by one clause, so a set exists
    exactly when each required group keeps a role once the forbidden ones are taken out.
    """
    avoid = frozenset().union(*(a for a, _ in clauses))
    groups = [g for _, hits in clauses for g in hits]
    existing = frozenset(roles.others)
    return all((g & existing) - avoid for g in groups)


def reaches(
    audience: Rules, source: Rules, roles: Roles, *, reading: tuple[int, ...] = (VIEW, HISTORY)
) -> bool:
    """Whether everyone who can view the audience's channel holds every bit of ``reading`` (what
    reading the source channel takes) there."""
    if roles.everyone & ADMINISTRATOR:
        return True
    named = set(audience.members) | set(source.members)
    people: list[tuple[Pair | None, Pair | None]] = [(None, None)]
    people += [(audience.members.get(m), source.members.get(m)) for m in named]
    for seen_there, seen_here in people:
        views = _grants(audience, roles, VIEW, seen_there)
        for bit in reading:
            for a, b in product(views, _withholds(source, roles, bit, seen_here)):
                if _satisfiable((a, b), roles):
                    return False
    return True


# -- from discord.py's objects -------------------------------------------------------------


def channel_rules(channel: discord.abc.GuildChannel) -> Rules:
    """The overwrites as Discord sent them. Not ``channel.overwrites``: its PermissionOverwrite
    lets deny win for a bit an overwrite both allows and denies (the API accepts one), where
    Discord, and discord.py's own ``permissions_for``, apply the deny and then the allow."""
    everyone: Pair = (0, 0)
    by_role: dict[int, Pair] = {}
    by_member: dict[int, Pair] = {}
    guild_id = channel.guild.id
    for overwrite in channel._overwrites:
        pair = (overwrite.allow, overwrite.deny)
        if overwrite.is_member():
            by_member[overwrite.id] = pair
        elif overwrite.id == guild_id:
            everyone = pair
        else:
            by_role[overwrite.id] = pair
    return Rules(everyone, by_role, by_member)


def vocal(channel: object) -> bool:
    """A voice or stage channel, whose text chat takes Connect to read."""
    return isinstance(channel, discord.VoiceChannel | discord.StageChannel)


def reading(channel: discord.abc.GuildChannel) -> tuple[int, ...]:
    """The bits reading ``channel``'s messages takes."""
    return (VIEW, HISTORY, CONNECT) if vocal(channel) else (VIEW, HISTORY)


def server_roles(guild: discord.Guild) -> Roles:
    return Roles(
        guild.default_role.permissions.value,
        {r.id: r.permissions.value for r in guild.roles if r.id != guild.id},
    )


def _base_channel(
    channel: discord.abc.GuildChannel | discord.Thread,
) -> discord.abc.GuildChannel | None:
    """Whose overwrites decide who reads ``channel``: a thread's parent, or itself."""
    if isinstance(channel, discord.Thread):
        return channel.parent
    return channel


def readable_by_all_readers(
    answer_channel: discord.abc.GuildChannel | discord.Thread,
    sources: Iterable[discord.abc.GuildChannel | discord.Thread],
) -> frozenset[int]:
    """The ids of ``sources`` whose images everyone who can view ``answer_channel`` may see.

    Private threads are never included (their readers are their members, whom the channel's
    other readers are not). Age-restricted sources only for an age-restricted answer channel.
    Whatever cannot be resolved from the cache is left out.
    """
    if not isinstance(answer_channel, discord.abc.GuildChannel | discord.Thread):
        return frozenset()  # not in the cache: its readers are unknown
    audience = _base_channel(answer_channel)
    if audience is None:
        return frozenset()
    roles = server_roles(audience.guild)
    audience_rules = channel_rules(audience)
    adult = bool(answer_channel.is_nsfw())
    verdicts: dict[int, bool] = {}
    shown: set[int] = set()
    for source in sources:
        if isinstance(source, discord.Thread) and source.is_private():
            continue
        if source.is_nsfw() and not adult:
            continue
        base = _base_channel(source)
        if base is None:
            continue
        if base.id not in verdicts:
            # Even the answer's own channel is checked: its viewers may lack its history.
            verdicts[base.id] = reaches(
                audience_rules, channel_rules(base), roles, reading=reading(base)
            )
        if verdicts[base.id]:
            shown.add(source.id)
    return frozenset(shown)
