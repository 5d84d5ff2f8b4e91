"""What the member typed or posted, read into what the store is asked: dates, a query cut to what
the model reads, a query picture's vector."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np

from retrieval.encoding.service import EncoderService
from retrieval.pictures.images import NotAnImage, PreprocessSpec, prepare, sniff_image_type

DATE_HELP = (
    "Use a date like `2025-03-01` (UTC), or how long ago: `7d`, `2w`, `3mo`, `1y`, `12h`, "
    "`today`, `yesterday`."
)
_AGO = re.compile(
    r"^(\d{1,4})\s*(h|hours?|d|days?|w|weeks?|mo|months?|y|years?)(?:\s+ago)?$", re.IGNORECASE
)
_UNIT = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
_UNIT |= {"mo": timedelta(days=30), "y": timedelta(days=365)}


class BadQuery(ValueError):
    """Input the member can fix; the message is written for them."""


def _unreadable(text: str) -> BadQuery:
    return BadQuery(f"I can't read `{text.strip()[:40]}` as a date. {DATE_HELP}")


def parse_when(text: str, *, now: datetime) -> datetime:
    """A moment from a date, a date and time, or how long ago (``7d``); dates are UTC midnight."""
    value = text.strip().lower()
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if value == "today":
        return today
    if value == "yesterday":
        return today - timedelta(days=1)
    if match := _AGO.match(value):
        amount, unit = int(match.group(1)), match.group(2)
        step = _UNIT["mo" if unit.startswith("mo") else unit[0]]
        try:
            return now - amount * step
        except OverflowError:  # further back than the calendar goes (year 1)
            raise _unreadable(text) from None
    try:
        moment = datetime.fromisoformat(value.upper().replace(" ", "T"))
    except ValueError:
        raise _unreadable(text) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def date_range(
    after: str | None, before: str | None, *, now: datetime
) -> tuple[datetime | None, datetime | None]:
    """``after`` is inclusive, ``before`` exclusive, so back-to-back ranges never overlap."""
    start = parse_when(after, now=now) if after else None
    end = parse_when(before, now=now) if before else None
    if start and end and start >= end:
        raise BadQuery("`after` must be earlier than `before`.")
    return start, end


def fit_query(text: str, count_tokens: Callable[[str], int], limit: int) -> tuple[str, bool]:
    """The longest leading part of ``text`` (whole words) that the model reads; True if cut.

    The tokenizer would cut silently anyway; cutting here lets the answer say what was used.
    """
    if count_tokens(text) <= limit:
        return text, False
    words = text.split()
    low, high = 1, len(words)  # the first word alone is kept even if it is too long
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(" ".join(words[:middle])) <= limit:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low]), True


async def image_vector(
    data: bytes, *, encoder: EncoderService, spec: PreprocessSpec, max_pixels: int
) -> np.ndarray:
    """A query picture's vector, decoded and encoded ahead of the indexing backlog. Raises the
    same typed image errors as indexing.

    Always encoded, even for bytes the index holds: a stored vector would answer sooner, and
    so tell the member that the same file was posted somewhere, private channels included."""
    if sniff_image_type(data[:64]) is None:
        raise NotAnImage("the bytes are no PNG, JPEG, WebP or GIF")
    pixels = await asyncio.to_thread(prepare, data, spec, max_pixels=max_pixels)
    return await encoder.encode_query_image(pixels)
