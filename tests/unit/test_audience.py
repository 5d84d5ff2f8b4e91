"""Who reads a public answer: bot/audience.py against the stand-in's own implementation of
Discord's permission algorithm, and against discord.py's `permissions_for` on the objects the bot
really gets (raw overwrites, voice channels), over every combination of roles a member could
hold."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import discord
import pytest
from discord.state import ConnectionState

from bot.audience import HISTORY, VIEW, Roles, Rules, reaches, readable_by_all_readers
from tests.fakediscord import FakeDiscord, payloads
from tests.fakediscord.permissions import MEMBER, ROLE, Overwrite, P, channel_permissions

GUILD = 1
ROLE_IDS = (11, 12, 13, 14)
NAMED = (101, 102)  # members some overwrites name
VIEW_BIT, HISTORY_BIT = int(P.VIEW_CHANNEL), int(P.READ_MESSAGE_HISTORY)
BITS = (0, VIEW_BIT, HISTORY_BIT, VIEW_BIT | HISTORY_BIT)


def _guild(everyone: int, roles: dict[int, int]):
    return SimpleNamespace(
        id=GUILD,
        owner_id=999,
        everyone=SimpleNamespace(id=GUILD, permissions=everyone),
        roles={rid: SimpleNamespace(id=rid, permissions=perms) for rid, perms in roles.items()},
    )


def _channel(guild, overwrites: list[Overwrite]):
    return SimpleNamespace(guild=guild, overwrites=overwrites, is_thread=False)


def _rules(overwrites: list[Overwrite]) -> Rules:
    everyone = next(
        ((o.allow, o.deny) for o in overwrites if o.kind == ROLE and o.id == GUILD), (0, 0)
    )
    return Rules(
        everyone,
        {o.id: (o.allow, o.deny) for o in overwrites if o.kind == ROLE and o.id != GUILD},
        {o.id: (o.allow, o.deny) for o in overwrites if o.kind == MEMBER},
    )


def brute_force(guild, audience, source) -> bool:
    """Every member who can view ``audience`` reads ``source``, tried member by member."""
    member_ids = (500, *NAMED)  # 500 is named by no overwrite
    for member_id, count in itertools.product(member_ids, range(len(ROLE_IDS) + 1)):
        for held in itertools.combinations(ROLE_IDS, count):
            member = SimpleNamespace(id=member_id, roles=[guild.roles[r] for r in held])
            if not channel_permissions(audience, member) & P.VIEW_CHANNEL:
                continue
            here = channel_permissions(source, member)
            if not (here & P.VIEW_CHANNEL and here & P.READ_MESSAGE_HISTORY):
                return False
    return True


def _random_overwrites(rng: random.Random) -> list[Overwrite]:
    overwrites = []
    for target in (GUILD, *ROLE_IDS):
        if rng.random() < 0.5:
            overwrites.append(Overwrite(target, rng.choice(BITS), rng.choice(BITS), type=ROLE))
    for target in NAMED:
        if rng.random() < 0.2:
            overwrites.append(Overwrite(target, rng.choice(BITS), rng.choice(BITS), type=MEMBER))
    return overwrites


@pytest.mark.parametrize("seed", range(8))
def test_agrees_with_discords_algorithm_member_by_member(seed):
    rng = random.Random(seed)
    agreed = {True: 0, False: 0}
    for _ in range(250):
        everyone = rng.choice(BITS)
        roles = {
            r: rng.choice(BITS) | (int(P.ADMINISTRATOR) if rng.random() < 0.05 else 0)
            for r in ROLE_IDS
        }
        guild = _guild(everyone, roles)
        there, here = _random_overwrites(rng), _random_overwrites(rng)
        expected = brute_force(guild, _channel(guild, there), _channel(guild, here))
        assert reaches(_rules(there), _rules(here), Roles(everyone, roles)) == expected, (
            everyone,
            roles,
            there,
            here,
        )
        agreed[expected] += 1
    assert agreed[True] > 10 and agreed[False] > 10  # both answers were exercised


VIEW_READ = VIEW | HISTORY
PUBLIC = Roles(VIEW_READ, {11: 0, 12: 0})


def test_a_mod_only_channel_does_not_reach_a_public_one():
    mods_only = Rules((0, VIEW), {11: (VIEW, 0)})
    assert not reaches(Rules(), mods_only, PUBLIC)
    assert reaches(mods_only, Rules(), PUBLIC)  # the other way round is fine
    assert reaches(mods_only, mods_only, PUBLIC)


def test_viewers_without_history_are_readers_too():
    no_history = Rules((0, HISTORY))
    assert not reaches(no_history, no_history, PUBLIC)


def test_one_role_denied_is_enough_to_leave_a_channel_out():
    muted = Rules((0, 0), {12: (0, VIEW)})
    assert not reaches(Rules(), muted, PUBLIC)
    # ... unless that role cannot view the answer's channel either.
    assert reaches(Rules((0, 0), {12: (0, VIEW)}), muted, PUBLIC)


def test_a_member_overwrite_is_assumed_to_come_with_any_roles():
    banned_here = Rules(members={101: (0, VIEW)})
    assert not reaches(Rules(), banned_here, PUBLIC)
    assert reaches(Rules(members={101: (0, VIEW)}), banned_here, PUBLIC)
    guest_there = Rules((0, VIEW), members={101: (VIEW, 0)})
    mods_only = Rules((0, VIEW), {11: (VIEW, 0)})
    assert not reaches(guest_there, mods_only, PUBLIC)


def test_administrators_read_everything():
    assert reaches(Rules(), Rules((0, VIEW)), Roles(VIEW_READ | (1 << 3), {}))


# -- discord.py's own objects, as the bot gets them ------------------------------------------

CONNECT_BIT = int(P.CONNECT)
# Every combination of the bits reading takes, so an overwrite may allow and deny the same one.
READING_BITS = [
    sum(bits)
    for n in range(4)
    for bits in itertools.combinations((VIEW_BIT, HISTORY_BIT, CONNECT_BIT), n)
]


def _discord_guild(fd, guild) -> discord.Guild:
    """discord.py's Guild, built from the stand-in's GUILD_CREATE as the client builds it."""
    state = ConnectionState(
        dispatch=lambda *_: None, handlers={}, hooks={}, http=None, intents=discord.Intents.none()
    )
    return discord.Guild(data=payloads.guild_create(fd, guild, all_members=False), state=state)


def _discord_member(guild: discord.Guild, member_id: int, role_ids) -> discord.Member:
    data = {
        "user": {
            "id": str(member_id),
            "username": f"m{member_id}",
            "discriminator": "0",
            "avatar": None,
            "global_name": None,
        },
        "roles": [str(r) for r in role_ids],
        "joined_at": None,
        "deaf": False,
        "mute": False,
        "flags": 0,
    }
    return discord.Member(data=data, guild=guild, state=guild._state)


def _raw_overwrites(rng: random.Random, guild_id: int, role_ids, member_ids) -> list[Overwrite]:
    overwrites = []
    for target in (guild_id, *role_ids):
        if rng.random() < 0.6:
            allow, deny = rng.choice(READING_BITS), rng.choice(READING_BITS)
            overwrites.append(Overwrite(target, allow, deny, type=ROLE))
    for target in member_ids:
        if rng.random() < 0.2:
            allow, deny = rng.choice(READING_BITS), rng.choice(READING_BITS)
            overwrites.append(Overwrite(target, allow, deny, type=MEMBER))
    return overwrites


def _everyone_reads(answer: discord.abc.GuildChannel, source, members) -> bool:
    """discord.py's permissions_for, member by member: every viewer of ``answer`` reads
    ``source`` (and may Connect, for a voice or stage channel's text chat)."""
    for member in members:
        if not answer.permissions_for(member).view_channel:
            continue
        perms = source.permissions_for(member)
        voice = isinstance(source, discord.VoiceChannel | discord.StageChannel)
        if not (perms.view_channel and perms.read_message_history):
            return False
        if voice and not perms.connect:
            return False
    return True


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_discord_py_on_raw_overwrites_doubled_bits_included(seed):
    """The rule as the bot applies it to discord.py's channels (raw overwrites, where an
    overwrite may allow and deny one bit; Connect for voice chat) against discord.py's own
    ``permissions_for`` for every member the server could have."""
    rng = random.Random(seed)
    fd = FakeDiscord()
    agreed = {True: 0, False: 0}
    doubled = 0
    for case in range(150):
        guild = fd.add_guild(f"g{case}", bot_permissions=rng.choice(READING_BITS), dispatch=False)
        guild.everyone.permissions = rng.choice(READING_BITS)
        for name in ("a", "b", "c"):
            admin = int(P.ADMINISTRATOR) if rng.random() < 0.05 else 0
            guild.add_role(name, rng.choice(READING_BITS) | admin, dispatch=False)
        role_ids = [r for r in guild.roles if r != guild.id]
        named = [fd.ids.next() for _ in range(2)]
        answer = guild.add_text_channel(
            "answer", overwrites=_raw_overwrites(rng, guild.id, role_ids, named), dispatch=False
        )
        source_overwrites = _raw_overwrites(rng, guild.id, role_ids, named)
        if rng.random() < 0.5:
            source = guild.add_voice_channel(
                "source", stage=rng.random() < 0.3, overwrites=source_overwrites, dispatch=False
            )
        else:
            source = guild.add_text_channel("source", overwrites=source_overwrites, dispatch=False)
        doubled += any(o.allow & o.deny for o in (*answer.overwrites, *source.overwrites))

        client_guild = _discord_guild(fd, guild)
        there, here = client_guild.get_channel(answer.id), client_guild.get_channel(source.id)
        members = [
            _discord_member(client_guild, member_id, held)
            for member_id in (fd.ids.next(), *named)
            for n in range(len(role_ids) + 1)
            for held in itertools.combinations(role_ids, n)
        ]
        expected = _everyone_reads(there, here, members)
        assert (here.id in readable_by_all_readers(there, [here])) == expected, (
            guild.everyone.permissions,
            {r: guild.roles[r].permissions for r in role_ids},
            answer.overwrites,
            source.overwrites,
            type(here).__name__,
        )
        agreed[expected] += 1
    assert agreed[True] > 10 and agreed[False] > 10  # both answers were exercised
    assert doubled > 50  # and overwrites that allow and deny one bit, many times


def test_a_doubled_bit_in_the_answers_channel_counts_its_viewers():
    """A role whose overwrite on the answer's channel both allows and denies View Channel can
    view it (the deny applies first, then the allow): the mods' channel does not reach it."""
    fd = FakeDiscord()
    guild = fd.add_guild("doubled", dispatch=False)
    mods = guild.add_role("mods", dispatch=False)
    guests = guild.add_role("guests", dispatch=False)
    hidden = [Overwrite(guild.everyone, deny=P.VIEW_CHANNEL), Overwrite(mods, allow=P.VIEW_CHANNEL)]
    both = Overwrite(guests, allow=P.VIEW_CHANNEL, deny=P.VIEW_CHANNEL)
    lounge = guild.add_text_channel("lounge", overwrites=[*hidden, both], dispatch=False)
    secret = guild.add_text_channel("secret", overwrites=hidden, dispatch=False)
    client_guild = _discord_guild(fd, guild)
    there, here = client_guild.get_channel(lounge.id), client_guild.get_channel(secret.id)
    guest = _discord_member(client_guild, fd.ids.next(), [guests.id])
    assert there.permissions_for(guest).view_channel  # discord.py agrees with Discord here
    assert readable_by_all_readers(there, [here]) == frozenset()
    assert readable_by_all_readers(here, [there]) == {there.id}
