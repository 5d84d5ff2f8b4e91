"""Writing a batch of which the database may refuse a row.

A statement the database refuses (a value it cannot take, a constraint) would be refused again
however often it was tried, and with it every row in the same batch. So a refused batch is split
in halves, each written on its own, down to the rows refused alone: those are recorded as failed
for good (``refused:<code>``, counted per server) and the rest is stored. A batch with one bad
row among n costs about 2·log2(n) more writes; writes are idempotent, so a half written before
an outage is written again harmlessly once the caller tries again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from retrieval.errors import StoreUnavailable

T = TypeVar("T")
R = TypeVar("R")


def refusal_reason(error: StoreUnavailable) -> str:
    """The failure reason of a refused row, as counted (the column holds 40 characters)."""
    return f"refused:{error.refused}"[:40]


async def isolating(
    items: Sequence[T], write: Callable[[Sequence[T]], Awaitable[R]]
) -> tuple[list[R], list[tuple[T, StoreUnavailable]]]:
    """``write(items)``, or where the database refuses it, ``write`` of each half, and so on down
    to single items. Returns what each write that went through returned, and each item refused
    alone with its refusal. An outage is raised as it comes."""
    if not items:
        return [], []
    try:
        return [await write(items)], []
    except StoreUnavailable as exc:
        if not exc.refused:
            raise
        if len(items) == 1:
            return [], [(items[0], exc)]
    middle = len(items) // 2
    done, refused = await isolating(items[:middle], write)
    later_done, later_refused = await isolating(items[middle:], write)
    return done + later_done, refused + later_refused
