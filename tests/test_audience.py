"""Who reads a public answer: bot/audience.py against the stand-in's own implementation of
Discord's permission algorithm, over every combination of roles a member could hold."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import pytest

from bot.audience import HISTORY, VIEW, Roles, Rules, reaches
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
