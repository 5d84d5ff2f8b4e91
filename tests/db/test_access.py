"""Which private threads a search may look in: only those the member is confirmed to be in, and
Discord is asked only about the threads that hold matches, a bounded number of times."""

from __future__ import annotations

from types import SimpleNamespace

import discord

from bot.permissions import MEMBERSHIP_LOOKUPS, MEMBERSHIP_ROUNDS, Access, Visibility


class Thread:
    """What `Access` asks of a private thread: whether a member is in it (a REST read)."""

    def __init__(self, thread_id: int, members: set[int]) -> None:
        self.id = thread_id
        self.members = members
        self.asked = 0

    async def fetch_member(self, member_id: int) -> object:
        self.asked += 1
        if member_id not in self.members:
            response = SimpleNamespace(status=404, reason="Not Found")
            raise discord.NotFound(response, "Unknown Member")
        return SimpleNamespace(id=member_id)


MEMBER = SimpleNamespace(id=7)


def seen_with(threads: list[Thread]) -> Visibility:
    return Visibility(
        guild_id=1,
        member=MEMBER,
        channel_ids=frozenset({100}),
        unconfirmed_threads={t.id: t for t in threads},
    )


def ranked(order: list[int]):
    """A probe: the threads holding matches, best first, among those it is asked about."""
    asked: list[frozenset[int]] = []

    async def probe(seen: Visibility, threads: frozenset[int]) -> list[int]:
        asked.append(threads)
        return [t for t in order if t in threads]

    probe.asked = asked
    return probe


async def test_threads_the_member_is_not_in_cannot_crowd_out_theirs():
    others = [Thread(i, members=set()) for i in range(1, 16)]
    theirs = Thread(99, members={MEMBER.id})
    quiet = Thread(50, members={MEMBER.id})  # the member's too, but nothing in it matches
    probe = ranked([t.id for t in others] + [theirs.id])
    access = Access(client=None, store=None)

    seen = await access.admit(seen_with([*others, theirs, quiet]), probe)
    assert seen.channel_ids == {100, 99}
    assert set(seen.unconfirmed_threads) == {t.id for t in others} | {quiet.id}
    assert quiet.asked == 0 and all(t.asked == 1 for t in [*others, theirs])
    # Each round looks only among the threads not asked about yet: refused ones free the best
    # places for others, so it goes on until a round refuses none.
    assert probe.asked[1:] == [{t.id for t in others[10:]} | {99, 50}, {50}]


async def test_asking_is_bounded_however_many_threads_hold_matches():
    others = [Thread(i, members=set()) for i in range(1, 60)]
    access = Access(client=None, store=None)
    seen = await access.admit(seen_with(others), ranked([t.id for t in others]))
    assert seen.channel_ids == {100}
    assert sum(t.asked for t in others) == MEMBERSHIP_ROUNDS * MEMBERSHIP_LOOKUPS


async def test_one_round_is_enough_when_every_thread_holding_matches_is_the_members():
    mine = [Thread(i, members={MEMBER.id}) for i in (1, 2)]
    probe = ranked([1, 2])
    seen = await Access(client=None, store=None).admit(seen_with(mine), probe)
    assert seen.channel_ids == {100, 1, 2} and not seen.unconfirmed_threads
    assert len(probe.asked) == 1
