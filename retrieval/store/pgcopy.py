"""Image records as a PostgreSQL binary COPY stream, to stage a bulk write.

A batch is copied into a temporary table and stored from there by one guarded INSERT ... SELECT
(see retrieval/store/postgres.py). Binary, because the alternative spends its time on text:
formatting 512 floats per vector in Python and parsing them again in the server took most of a
bulk write. Here a vector goes as pgvector's own binary form (dimension, a zero, big-endian
float4s), one numpy conversion per vector: a batch of 2,000 takes about 12 ms.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np

from retrieval.store.allowed import RECORD_COLUMNS
from retrieval.store.base import ImageRecord

STAGED = "staged_images"
# A temporary table per connection, created on its first bulk write and emptied by every
# commit: no catalog change per batch, and nothing left behind.
CREATE_STAGED = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGED} ON COMMIT DELETE ROWS AS "
    f"SELECT {', '.join(RECORD_COLUMNS)} FROM images WITH NO DATA"
)

_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_TRAILER = struct.pack("!h", -1)
_POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_INT8 = struct.Struct("!iq")
_NULL = struct.pack("!i", -1)
_BIGINTS = frozenset(
    {"guild_id", "channel_id", "parent_id", "message_id", "image_key", "author_id"}
)


def _text(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!i", len(data)) + data


def copy_payload(records: Sequence[ImageRecord]) -> bytes:
    """The records as a binary COPY stream of RECORD_COLUMNS, in that order."""
    vectors = [np.asarray(r.embedding, dtype=np.float32).ravel() for r in records]
    parts = [_HEADER]
    row_start = struct.pack("!h", len(RECORD_COLUMNS))
    for record, vector in zip(records, vectors, strict=True):
        parts.append(row_start)
        for name in RECORD_COLUMNS:
            value = getattr(record, name)
            if value is None:
                parts.append(_NULL)
            elif name in _BIGINTS:
                parts.append(_INT8.pack(8, value))
            elif name == "posted_at":
                moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
                parts.append(_INT8.pack(8, (moment - _POSTGRES_EPOCH) // _MICROSECOND))
            elif name == "embedding":
                body = vector.astype(">f4").tobytes()
                parts.append(struct.pack("!ihh", 4 + len(body), len(vector), 0) + body)
            else:
                parts.append(_text(value))
    parts.append(_TRAILER)
    return b"".join(parts)


__all__ = ["CREATE_STAGED", "STAGED", "copy_payload"]
