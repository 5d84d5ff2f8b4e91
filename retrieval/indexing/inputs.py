"""Input from Discord made safe at the edge, before it reaches any statement.

Text is what a member chose (a file name, a link), and both databases refuse some of it: a NUL
in any text (PostgreSQL: SQLSTATE 22021), a lone surrogate, which is no UTF-8 at all (both
drivers). These characters carry no meaning in a name or a link, so they are left out, and text
is cut to its column's length. What cannot be made valid (an id out of range, a time no Discord
message has, a link that does not parse) is named by `ref_problem`, for the caller to count.

The Discord adapter cleans what it builds (`bot/refs.py`), and the jobs queue cleans and checks
again whatever it is given, so a worker or any other caller cannot queue a bad value either.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import yarl

from retrieval.indexing.cursors import DISCORD_EPOCH_MS

if TYPE_CHECKING:
    from retrieval.indexing.jobs import ImageRef

# The lengths of the columns these land in (retrieval/database/tables.py).
MAX_FILENAME = 255
MAX_CONTENT_TYPE = 64
# A link is not cut (a shorter one leads elsewhere): a longer one is refused. Discord's own links
# are a few hundred characters; this leaves room for an attachment's longest file names.
MAX_URL = 16_384
# Discord ids, and what a BIGINT holds: 63 bits, never negative.
_ID_LIMIT = 2**63
# What an INTEGER holds (a picture's width and height).
_SIDE_LIMIT = 2**31
# Discord's first moment, and the last a 63-bit snowflake can name (in 2084).
_FIRST = datetime.fromtimestamp(DISCORD_EPOCH_MS / 1000, UTC)
_LAST = _FIRST + timedelta(milliseconds=_ID_LIMIT >> 22)
_ID_FIELDS = ("guild_id", "channel_id", "message_id", "image_key", "author_id")

# Reasons, counted per server with the other failures.
INVALID_ID, INVALID_TIME, INVALID_URL = "invalid_id", "invalid_time", "invalid_url"
NON_FINITE = "non_finite_vector"


def clean_text(value: str, *, limit: int | None = None) -> str:
    """``value`` without NULs and lone surrogates, cut to ``limit`` characters."""
    if not value.isascii():
        # Surrogates cannot be encoded: "ignore" drops exactly them.
        value = value.encode("utf-8", "ignore").decode("utf-8")
    value = value.replace("\x00", "")
    return value if limit is None else value[:limit]


def clean_ref(ref: ImageRef) -> ImageRef:
    """The image with every text cleaned and cut to its column; a size out of range unknown.

    A proxy link that does not parse, or dimensions out of range, are left out: the picture is
    then downloaded from its URL as it is, which loses nothing but bytes."""
    size = ref.size if ref.size is not None and 0 <= ref.size < _ID_LIMIT else None
    proxy_url = clean_text(ref.proxy_url) if ref.proxy_url else None
    sides = (ref.width, ref.height)
    if not all(isinstance(side, int) and 0 < side < _SIDE_LIMIT for side in sides):
        sides = (None, None)
    cleaned = dict(
        url=clean_text(ref.url),
        source_url=clean_text(ref.source_url),
        filename=clean_text(ref.filename, limit=MAX_FILENAME),
        content_type=clean_text(ref.content_type, limit=MAX_CONTENT_TYPE),
        size=size,
        proxy_url=proxy_url if proxy_url and _valid_url(proxy_url) else None,
        width=sides[0],
        height=sides[1],
    )
    if all(getattr(ref, name) == value for name, value in cleaned.items()):
        return ref
    return dataclasses.replace(ref, **cleaned)


def ref_problem(ref: ImageRef) -> str | None:
    """Why the (cleaned) image cannot be stored, as a failure reason; None when it can."""
    ids = [getattr(ref, name) for name in _ID_FIELDS]
    if ref.parent_id is not None:
        ids.append(ref.parent_id)
    if not all(valid_id(i) for i in ids):
        return INVALID_ID
    posted = ref.posted_at if ref.posted_at.tzinfo else ref.posted_at.replace(tzinfo=UTC)
    if not _FIRST <= posted <= _LAST:
        return INVALID_TIME
    if not (_valid_url(ref.url) and _valid_url(ref.source_url)):
        return INVALID_URL
    return None


def valid_id(value: object) -> bool:
    """Whether ``value`` can be a Discord id (and fits a BIGINT)."""
    return isinstance(value, int) and 0 <= value < _ID_LIMIT


def finite(vector: np.ndarray) -> bool:
    """Whether a vector may be stored: NaN or infinity would poison every search's scores
    (and PostgreSQL refuses them)."""
    return bool(np.isfinite(vector).all())


def _valid_url(url: str) -> bool:
    if len(url) > MAX_URL:
        return False
    try:
        parsed = yarl.URL(url)
        return parsed.scheme in ("http", "https") and bool(parsed.host) and parsed.port is not None
    except ValueError:  # e.g. a port above 65535, a broken IPv6 address
        return False
