"""What may be kept, as SQL: members' opt-outs and excluded channels, checked by the database.

Every write is one INSERT ... SELECT whose WHERE asks the policy tables, so an image of an
opted-out member or from an excluded channel (or a thread of one, or a thread whose channel is not
known yet) is refused by the statement itself, whatever a process remembers. Searches carry the
same condition, so a row that slipped in anyway (two processes racing an opt-out, a crash between
an opt-out and its deletion) is never shown, and `forbidden()` lets a sweep delete such rows, at
every start and periodically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import (
    ColumnElement,
    and_,
    any_,
    bindparam,
    delete,
    func,
    literal,
    or_,
    select,
    tuple_,
)
from sqlalchemy.sql import Select

from retrieval.database.tables import (
    UNKNOWN_PARENT,
    BotState,
    ExcludedChannel,
    IndexedImage,
    IndexJob,
    OptOut,
)
from retrieval.errors import ModelSwitched
from retrieval.store.base import ImageRecord

RECORD_COLUMNS: Sequence[str] = ImageRecord.__slots__
KEY = ("message_id", "image_key", "guild_id")
# Where bot_state keeps the model the index is built with (see retrieval/indexing/model_switch.py),
# and the advisory lock (PostgreSQL) that adopting another model holds alone and every write shares.
INDEX_MODEL_KEY = "index_model"
MODEL_LOCK = "clipfind:" + INDEX_MODEL_KEY


def known_parent(parent_id) -> ColumnElement[bool]:
    """Not in a thread whose channel is unknown (UNKNOWN_PARENT): such an image is taken for
    excluded, written nowhere and shown to no one, until its parent is recorded."""
    return or_(parent_id.is_(None), parent_id != UNKNOWN_PARENT)


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
        known_parent(parent_id),
    )


def permitted_in_batch(author_id, channel_id, parent_id) -> ColumnElement[bool]:
    """`permitted` for a batch of rows being written, with subqueries that do not refer to the
    rows (each policy table read once per statement). Citus runs these by reading the policy
    first; it refuses the correlated form next to the batch's `unnest`."""
    excluded = select(ExcludedChannel.channel_id).scalar_subquery()
    return and_(
        author_id.not_in(select(OptOut.user_id).scalar_subquery()),
        channel_id.not_in(excluded),
        or_(parent_id.is_(None), parent_id.not_in(excluded)),
        known_parent(parent_id),
    )


def stored_permitted(*, per_row: bool = False) -> ColumnElement[bool]:
    """`permitted` for the images table's own rows (for searches)."""
    return permitted(
        IndexedImage.author_id, IndexedImage.channel_id, IndexedImage.parent_id, per_row=per_row
    )


def forbidden(*, arrays: bool = False) -> list[Callable[[type], ColumnElement[bool]]]:
    """Rows the policy forbids, of the images or the jobs table (same columns), as separate
    conditions: each is answered through its own index (author, guild and channel, parent) from
    the small policy tables, never a full scan.

    ``arrays`` (PostgreSQL) asks for the ids as one array, `= ANY(ARRAY(SELECT ...))`, read
    before the scan: Citus sends that statement whole to the jobs table's node, where the
    `IN (SELECT ...)` form becomes a join with a result it estimates at 1,000 rows, and a full
    scan of the jobs table. Plain PostgreSQL plans both through the index.

    An excluded channel's rows are matched by guild and channel, which the images table's
    channel index leads with; as arrays, the guilds and the channels each (a channel lies in
    one guild, so no other row matches both).

    Rows in a thread whose parent is unknown are not among them: hidden and refused, but kept
    until the bot learns the parent (bot/threads.py), and swept then if it is excluded.
    """

    def ids(column) -> ColumnElement:
        query = select(column)
        return any_(func.array(query.scalar_subquery())) if arrays else query

    def among(column, values) -> ColumnElement[bool]:
        return column == values if arrays else column.in_(values)

    def in_excluded(t) -> ColumnElement[bool]:
        if not arrays:
            return tuple_(t.guild_id, t.channel_id).in_(
                select(ExcludedChannel.guild_id, ExcludedChannel.channel_id)
            )
        return and_(
            among(t.guild_id, ids(ExcludedChannel.guild_id)),
            among(t.channel_id, ids(ExcludedChannel.channel_id)),
        )

    return [
        lambda t: among(t.author_id, ids(OptOut.user_id)),
        in_excluded,
        lambda t: among(t.parent_id, ids(ExcludedChannel.channel_id)),
    ]


async def check_model(conn, records: Sequence[ImageRecord]) -> None:
    """Raise ModelSwitched unless every record is of the model the index is built with (any,
    before a model was recorded). First in the writing transaction: a model switch then either
    waits for the write to commit, and its re-index sees what was written and does it again, or
    commits first, and the write sees it and stores nothing. Without this, a worker still on the
    old model stores vectors of it for the re-index's jobs, and the channel's clean-up deletes
    them as stale once its walk ends: those images would leave the index."""
    if conn.dialect.name == "postgresql":
        await conn.execute(
            select(func.pg_advisory_xact_lock_shared(func.hashtextextended(MODEL_LOCK, 0)))
        )
    recorded = await conn.scalar(select(BotState.value).where(BotState.key == INDEX_MODEL_KEY))
    if recorded is None:
        return
    for model_id in {record.model_id for record in records}:
        if model_id != recorded:
            raise ModelSwitched(recorded=recorded, ours=model_id)


async def take_jobs(conn, job_ids: Sequence[int | None]) -> set[int]:
    """Delete the jobs of records about to be stored and return those that still existed: a
    record whose job is gone (its message deleted, its author opted out...) is not stored.
    First in the writing transaction: see retrieval/store/deletes.py for why."""
    ids = [job_id for job_id in job_ids if job_id is not None]
    if not ids:
        return set()
    taken = await conn.execute(delete(IndexJob).where(IndexJob.id.in_(ids)).returning(IndexJob.id))
    return set(taken.scalars())


def still_wanted(records: Sequence, job_ids: Sequence[int | None] | None, taken: set[int]):
    if job_ids is None:
        return list(records)
    return [r for r, job in zip(records, job_ids, strict=True) if job is None or job in taken]


def guarded_rows() -> Select:
    """One record's values as a SELECT that yields nothing when the policy refuses it; bound
    by name, one parameter per column of the record."""
    table = IndexedImage.__table__
    values = [bindparam(name, type_=table.c[name].type) for name in RECORD_COLUMNS]
    by_name = dict(zip(RECORD_COLUMNS, values, strict=True))
    return select(*values).where(
        permitted(by_name["author_id"], by_name["channel_id"], by_name["parent_id"])
    )


__all__ = [
    "INDEX_MODEL_KEY",
    "KEY",
    "MODEL_LOCK",
    "RECORD_COLUMNS",
    "check_model",
    "forbidden",
    "guarded_rows",
    "known_parent",
    "permitted",
    "stored_permitted",
]
