"""Backfill cursors: the walk's arithmetic, and their table on both databases."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from retrieval.indexing.cursors import BackfillCursors, BackfillProgress, Cursor, snowflake_at

FULL, SHORT = True, False


def test_snowflake_at_matches_discords_epoch():
    assert snowflake_at(datetime(2015, 1, 1, tzinfo=UTC)) == 0
    # A real id: its first 42 bits are milliseconds since 2015.
    known = 175928847299117063
    moment = datetime.fromtimestamp(((known >> 22) + 1420070400000) / 1000, UTC)
    assert snowflake_at(moment) == known >> 22 << 22


def test_fresh_walk_goes_back_to_the_beginning():
    cursor = Cursor(channel_id=1, guild_id=9)
    assert cursor.fresh and cursor.wants_older() and not cursor.wants_newer(500)
    cursor = cursor.read_older([300, 250, 201], full=FULL)
    assert (cursor.oldest_id, cursor.newest_id, cursor.complete) == (201, 300, False)
    assert cursor.wants_older() and not cursor.wants_newer(300)
    cursor = cursor.read_older([200, 150], full=SHORT)
    assert (cursor.oldest_id, cursor.newest_id, cursor.complete) == (150, 300, True)
    assert not cursor.wants_older()


def test_an_empty_page_going_back_is_the_beginning():
    cursor = Cursor(1, 9, oldest_id=150, newest_id=300).read_older([], full=SHORT)
    assert cursor.complete and cursor.oldest_id == 150


def test_empty_channel_is_complete_and_later_read_from_its_start():
    cursor = Cursor(1, 9).read_older([], full=SHORT)
    assert cursor.complete and not cursor.wants_older() and not cursor.fresh
    assert cursor.wants_newer(None) and cursor.wants_newer(10)
    cursor = cursor.read_newer([10, 20])
    assert (cursor.oldest_id, cursor.newest_id, cursor.complete) == (10, 20, True)


def test_newer_messages_move_only_the_newest_end():
    cursor = Cursor(1, 9, oldest_id=150, newest_id=300, complete=True)
    assert cursor.wants_newer(301) and not cursor.wants_newer(300)
    assert cursor.wants_newer(None), "without Discord's hint, ask"
    cursor = cursor.read_newer([301, 350])
    assert (cursor.oldest_id, cursor.newest_id, cursor.complete) == (150, 350, True)
    assert cursor.read_newer([]) == cursor


def test_age_limit_stops_at_the_floor_and_a_raised_limit_walks_on():
    cursor = Cursor(1, 9).read_older([300, 200, 100], full=FULL, floor=150)
    assert (cursor.oldest_id, cursor.complete) == (150, False)
    assert not cursor.wants_older(floor=150)
    assert not cursor.wants_older(floor=160), "the floor moves up as time passes"
    assert cursor.wants_older(floor=50), "a longer limit reads further back"
    assert cursor.read_older([140, 120], full=SHORT, floor=50).complete


def test_progress_reads_as_one_line():
    progress = BackfillProgress(3, 2, 12345, 67, running=True)
    assert str(progress) == "2/3 channels, 12,345 messages read, 67 images submitted (running)"


@pytest.fixture
def cursors(store_engine):
    return BackfillCursors(store_engine)


async def test_cursors_are_saved_replaced_and_forgotten(cursors):
    big = 2**63 - 1  # Discord ids use all 64 bits of a signed BIGINT's range
    assert await cursors.get(1) is None
    first = Cursor(channel_id=1, guild_id=9, oldest_id=big - 5, newest_id=big)
    await cursors.save(first)
    assert await cursors.get(1) == first
    done = Cursor(1, 9, oldest_id=10, newest_id=big, complete=True)
    await cursors.save(done)
    await cursors.save(Cursor(channel_id=2, guild_id=9))
    await cursors.save(Cursor(channel_id=3, guild_id=8))
    assert await cursors.get(1) == done
    assert {c.channel_id for c in await cursors.in_guild(9)} == {1, 2}

    await cursors.forget([1])
    await cursors.forget([])
    assert await cursors.get(1) is None and await cursors.get(2) is not None
    await cursors.forget_guild(9)
    assert await cursors.in_guild(9) == [] and await cursors.get(3) is not None
