"""The IDENTIFY gate: buckets, the window held after each turn, and a database that fails."""

from __future__ import annotations

import asyncio
import logging
import time

from bot.identify import IdentifyGate
from retrieval.database.engine import create_engine
from retrieval.database.locks import Purpose, held


async def test_a_bucket_is_held_for_the_window_after_each_turn(postgres_engine):
    gate = IdentifyGate(postgres_engine, window_s=0.5)
    gate.max_concurrency = 2
    assert [gate.bucket(s) for s in range(5)] == [0, 1, 0, 1, 0]
    started = time.monotonic()
    await gate.wait_turn(0)
    await gate.wait_turn(1)  # another bucket: at once
    assert time.monotonic() - started < 0.4
    await gate.wait_turn(2)  # bucket 0 again: after the window
    assert time.monotonic() - started >= 0.5
    await gate.close()
    # Closing released bucket 0 at once, even the turn whose window had not begun to run.
    other = create_engine(postgres_engine.url.render_as_string(hide_password=False))
    try:
        async with asyncio.timeout(0.4), held(other, purpose=Purpose.IDENTIFY, key=0):
            pass
    finally:
        await other.dispose()


async def test_an_unreachable_database_falls_back_to_waiting(tmp_path, caplog):
    engine = create_engine(f"postgresql+asyncpg://postgres@/none?host={tmp_path}")
    gate = IdentifyGate(engine, window_s=0.3)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="bot.identify"):
        await asyncio.wait_for(gate.wait_turn(3), 10)
    assert time.monotonic() - started >= 0.3
    assert "shard 3: could not take its IDENTIFY turn" in caplog.text
    await gate.close()
    await engine.dispose()
