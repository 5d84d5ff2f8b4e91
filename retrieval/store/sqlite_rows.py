"""Image records as SQLite rows: the guarded upsert, and a batch's parameters for the driver.

A bulk write hands the driver plain tuples for one executemany of the same guarded statement
(see retrieval/store/allowed.py), without SQLAlchemy's per-row parameter processing: that
processing and a round trip through the driver's thread per row were most of a write's time.
"""

from __future__ import annotations

import operator

import numpy as np
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.dialects.sqlite import insert

from retrieval.database.tables import IndexedImage, sqlite_text
from retrieval.store.allowed import KEY, RECORD_COLUMNS, guarded_rows
from retrieval.store.base import ImageRecord


def _guarded_upsert():
    stmt = insert(IndexedImage).from_select(list(RECORD_COLUMNS), guarded_rows())
    return stmt.on_conflict_do_update(
        index_elements=list(KEY),
        set_={name: stmt.excluded[name] for name in RECORD_COLUMNS if name not in KEY},
    )


GUARDED_UPSERT = _guarded_upsert()
RETURNING = GUARDED_UPSERT.returning(IndexedImage.id)
# The same statement as the driver's SQL, and where each of its parameters comes from.
_COMPILED = GUARDED_UPSERT.compile(dialect=sqlite_dialect())
DRIVER_SQL = str(_COMPILED)
_CONSTANTS = [(n, v) for n, v in _COMPILED.params.items() if n not in RECORD_COLUMNS]
# The parameters in order, as indexes into a record's fields followed by the constants.
_FIELDS = [*RECORD_COLUMNS, *(name for name, _ in _CONSTANTS)]
_ORDER = operator.itemgetter(*(_FIELDS.index(name) for name in _COMPILED.positiontup or ()))
_POSTED, _EMBEDDING = RECORD_COLUMNS.index("posted_at"), RECORD_COLUMNS.index("embedding")


def record_values(record: ImageRecord) -> dict:
    return {name: getattr(record, name) for name in ImageRecord.__slots__}


def driver_row(record: ImageRecord) -> tuple:
    """A record as the driver's parameters for `DRIVER_SQL` (tens of thousands a second)."""
    values = [getattr(record, name) for name in RECORD_COLUMNS]
    values[_POSTED] = sqlite_text(record.posted_at)
    values[_EMBEDDING] = np.asarray(record.embedding, dtype=np.float32).tobytes()
    values.extend(value for _, value in _CONSTANTS)
    return _ORDER(values)


def stored_row(row_id: int, record: ImageRecord) -> tuple:
    """A record just written, as the store reads rows back for its matrices (guild, model,
    id, channel, author, time as stored, vector bytes)."""
    return (
        record.guild_id,
        record.model_id,
        row_id,
        record.channel_id,
        record.author_id,
        sqlite_text(record.posted_at),
        np.asarray(record.embedding, dtype=np.float32).tobytes(),
    )


__all__ = ["DRIVER_SQL", "GUARDED_UPSERT", "RETURNING", "driver_row", "record_values", "stored_row"]
