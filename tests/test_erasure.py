"""The eraser deletes again once the pipeline drains, so images in flight stay deleted."""

from __future__ import annotations

import asyncio

from bot.erasure import Eraser
from retrieval.errors import StoreUnavailable


class Pipeline:
    def __init__(self) -> None:
        self.drained = asyncio.Event()

    async def join(self) -> None:
        await self.drained.wait()


async def test_deletes_again_after_the_pipeline_drains_unless_undone():
    pipeline = Pipeline()
    eraser = Eraser(pipeline)
    calls = {"message": 0, "member": 0}
    results = iter([2, 1])  # the second run finds an image written while it was in flight

    async def delete_message() -> int:
        calls["message"] += 1
        return next(results)

    async def delete_member() -> int:
        calls["member"] += 1
        return 0

    opted_out = True
    assert await eraser.erase(delete_message, what="message 1") == 2
    await eraser.erase(delete_member, what="member 7", still=lambda: opted_out)
    await asyncio.sleep(0.01)
    assert calls == {"message": 1, "member": 1}  # nothing more while images are in flight

    opted_out = False  # opted back in before the sweep: their new images must stay
    pipeline.drained.set()
    await asyncio.sleep(0.01)
    assert calls == {"message": 2, "member": 1}
    eraser.close()


async def test_patient_erase_waits_out_a_database_outage(monkeypatch):
    monkeypatch.setattr("bot.erasure._RETRY_FIRST_S", 0.01)
    pipeline = Pipeline()
    pipeline.drained.set()
    eraser = Eraser(pipeline)
    outcomes = iter([StoreUnavailable("down"), StoreUnavailable("down"), 3, 0])

    async def delete() -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert await eraser.erase_patiently(delete, what="message 1") == 3
    eraser.close()
