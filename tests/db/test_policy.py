"""Opt-outs and channel exclusions persist and answer from memory."""

from __future__ import annotations

from retrieval.policy.index_policy import IndexPolicy


async def test_policy_persists_and_covers_threads(sqlite_engine):
    policy = IndexPolicy(sqlite_engine)
    await policy.load()
    assert policy.allows(channel_id=1, author_id=7)
    await policy.opt_out(7)
    await policy.exclude_channel(guild_id=100, channel_id=2, by=9)
    assert not policy.allows(channel_id=1, author_id=7)
    assert not policy.allows(channel_id=2, author_id=8)
    assert not policy.allows(channel_id=3, author_id=8, parent_id=2)  # a thread of #2
    assert policy.allows(channel_id=3, author_id=8, parent_id=4)

    reloaded = IndexPolicy(sqlite_engine)
    await reloaded.load()
    assert reloaded.is_opted_out(7) and reloaded.excluded_in(100) == {2}
    await reloaded.opt_in(7)
    await reloaded.include_channel(2)
    again = IndexPolicy(sqlite_engine)
    await again.load()
    assert again.allows(channel_id=2, author_id=7)
