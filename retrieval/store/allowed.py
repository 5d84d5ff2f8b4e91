"""What may be kept, as SQL: members' opt-outs and excluded channels, checked by the database.

Every write is one INSERT ... SELECT whose WHERE asks the policy tables, so an image of an
opted-out member or from an excluded channel (or a thread of one) is refused by the statement
itself, whatever a process remembers. Searches carry the same condition, so a row that slipped in
anyway (two processes racing an opt-out, a crash between an opt-out and its deletion) is never
shown, and `forbidden()` lets a sweep delete such rows, at every start and periodically.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, and_, bindparam, literal, select
from sqlalchemy.sql import Select

from retrieval.models import ExcludedChannel, IndexedImage, OptOut
from retrieval.store.base import ImageRecord

RECORD_COLUMNS: Sequence[str] = ImageRecord.__slots__
KEY = ("message_id", "image_key")


def permitted(author_id, channel_id, parent_id, *, per_row: bool = False) -> ColumnElement[bool]:
    """True when an image by ``author_id`` in ``channel_id`` (a thread of ``parent_id``) may be
    kept; the arguments are columns or bound parameters.

    ``per_row`` keeps each check a per-row look-up (a primary-key probe) instead of letting
    PostgreSQL turn it into an anti-join: a join would end the HNSW index scan's ordered walk,
    and the search would sort every row of the guild. OFFSET stops that rewrite.
    """

    def absent(table, condition) -> ColumnElement[bool]:
        probe = select(literal(1)).select_from(table).where(condition)
        return ~(probe.offset(0) if per_row else probe).exists()

    return and_(
        absent(OptOut, OptOut.user_id == author_id),
        absent(ExcludedChannel, ExcludedChannel.channel_id == channel_id),
        absent(ExcludedChannel, ExcludedChannel.channel_id == parent_id),
    )


def stored_permitted(*, per_row: bool = False) -> ColumnElement[bool]:
    """`permitted` for the images table's own rows (for searches)."""
    return permitted(
        IndexedImage.author_id, IndexedImage.channel_id, IndexedImage.parent_id, per_row=per_row
    )


def forbidden() -> list[ColumnElement[bool]]:
    """Stored rows the policy forbids, as separate conditions: each is answered through its
    own index (author, channel, parent) from the small policy tables, never a full scan."""
    excluded = select(ExcludedChannel.channel_id)
    return [
        IndexedImage.author_id.in_(select(OptOut.user_id)),
        IndexedImage.channel_id.in_(excluded),
        IndexedImage.parent_id.in_(excluded),
    ]


def guarded_rows() -> Select:
    """One record's values as a SELECT that yields nothing when the policy refuses it; bound
    by name, one parameter per column of the record."""
    table = IndexedImage.__table__
    values = [bindparam(name, type_=table.c[name].type) for name in RECORD_COLUMNS]
    by_name = dict(zip(RECORD_COLUMNS, values, strict=True))
    return select(*values).where(
        permitted(by_name["author_id"], by_name["channel_id"], by_name["parent_id"])
    )


__all__ = ["KEY", "RECORD_COLUMNS", "forbidden", "guarded_rows", "permitted", "stored_permitted"]
