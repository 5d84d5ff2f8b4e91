"""SQLAlchemy tables. Discord ids are 64-bit integers; one row per indexed image reference."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for Discord scale.
RowId = BigInteger().with_variant(Integer, "sqlite")

# ``parent_id`` of an image in a thread whose channel is not known yet (stored before revision
# 0003, or whether its channel is a thread at all was not known when revision 0012 ran): the
# policy treats it as excluded, refused and hidden, until the bot asks Discord and records the
# parent. No Discord id is 0, and NULL keeps meaning "not in a thread".
UNKNOWN_PARENT = 0


# The lanes of the jobs table: an image's vector, and the words read from it.
CLIP_LANE, OCR_LANE = "clip", "ocr"
LANES = (CLIP_LANE, OCR_LANE)

# SQLite's text index over ``images.words``: an FTS5 table with the trigram tokenizer whose rowid is
# the image's id, kept in step by triggers (migration 0013). No model: SQLAlchemy has none for it.
WORDS_FTS = "images_words"


def schema_filter(dialect: str):
    """Alembic's ``include_object`` for a database of ``dialect``: what autogenerate compares.
    Leaves out SQLite's FTS5 table and its shadow tables (no model describes them), and the
    indexes the models declare for another database only (``Index.ddl_if``)."""

    def include(obj, name, type_, reflected, compare_to) -> bool:
        if type_ == "table" and reflected and name and name.startswith(WORDS_FTS):
            return False
        if type_ == "index" and not reflected:
            only = getattr(getattr(obj, "_ddl_if", None), "dialect", None)
            return only is None or only == dialect
        return True

    return include


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive one was written as UTC (SQLite keeps no zone)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def sqlite_text(moment: datetime) -> str:
    """How a moment is kept in SQLite: UTC, without a zone, always with microseconds (SQLAlchemy's
    own format, so values written by the driver directly and by SQLAlchemy compare as text)."""
    return utc(moment).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


class UTCDateTime(TypeDecorator):
    """A moment, always timezone-aware UTC in Python: ``timestamptz`` on PostgreSQL, and on SQLite
    the text of `sqlite_text`, which SQLite hands back naive and this type reads as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return utc(value).replace(tzinfo=None) if dialect.name == "sqlite" else utc(value)

    def process_result_value(self, value, dialect):
        return None if value is None else utc(value)


class Embedding(TypeDecorator):
    """A float32 vector: raw bytes on SQLite, pgvector's `vector` on PostgreSQL."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            from pgvector.sqlalchemy import VECTOR

            return dialect.type_descriptor(VECTOR())
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        vector = np.asarray(value, dtype=np.float32)
        if dialect.name == "postgresql":
            return vector
        return vector.tobytes()

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, bytes | bytearray | memoryview):
            return np.frombuffer(value, dtype=np.float32)
        return np.asarray(value, dtype=np.float32)


def threads_only(name: str) -> Index:
    """An index of ``parent_id`` over the rows in threads only: most rows have no parent, and an
    index whose entries are mostly NULL looks useless to SQLite's planner, which then swept
    excluded channels' threads by reading the whole table."""
    where = text("parent_id IS NOT NULL")
    return Index(name, "parent_id", sqlite_where=where, postgresql_where=where)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class IndexedImage(Base):
    """One image of one message: an attachment, or the picture of an image embed.

    Guild-scoped: every key holds ``guild_id``, so a distributed PostgreSQL (Citus) can spread
    the table over machines by it. The primary key is ``(id, guild_id)`` on PostgreSQL (ids grow
    with time, so new rows append to the index); SQLite keeps ``id`` alone, its rowid, which is
    what makes it grow by itself there.
    """

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    channel_id: Mapped[int] = mapped_column(BigInteger)
    # A thread's channel (None outside threads, UNKNOWN_PARENT while it is not known): an
    # exclusion of the channel covers its threads.
    parent_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    message_id: Mapped[int] = mapped_column(BigInteger)
    # The attachment id, or for an embed a stable 63-bit hash of its URL: with message_id, the
    # natural key that makes re-delivery and re-backfill idempotent.
    image_key: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    author_id: Mapped[int] = mapped_column(BigInteger)
    posted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    filename: Mapped[str] = mapped_column(String(255))
    # Unsigned: Discord's signed attachment links expire, the ids and path do not.
    source_url: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(64))
    content_hash: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(String(200))
    embedding: Mapped[np.ndarray] = mapped_column(Embedding)
    # The words read from the picture by the OCR lane, normalised (retrieval/encoding/textnorm.py):
    # NULL until read, empty when it has none. In the image's own row, so whatever deletes the
    # image deletes its words (migration 0013, which also made the text index).
    words: Mapped[str | None] = mapped_column(Text, nullable=True)
    words_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The lowest confidence among the lines kept (lines below the threshold are not kept).
    words_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        # Message ids grow with time: live posts append to this index.
        UniqueConstraint("message_id", "image_key", "guild_id"),
        # A server's rows of a model, or those of a date range (a search with after:/before:).
        Index("ix_images_guild_model_posted", "guild_id", "model_id", "posted_at"),
        # Guild first: a filter on one channel of a large guild must not make the planner AND
        # in a bitmap of the whole guild (migration 0010).
        Index("ix_images_guild_channel", "guild_id", "channel_id"),
        Index("ix_images_author", "guild_id", "author_id"),
        Index("ix_images_content", "content_hash", "model_id"),
        threads_only("ix_images_parent"),
        # The periodic sweep of opted-out members' rows (retrieval/store/allowed.py).
        Index("ix_images_author_id", "author_id"),
        # Which models the index holds, and how many rows each (a start-up after a model
        # switch), without reading every row.
        Index("ix_images_model", "model_id"),
        # A server's pictures whose words hold a substring: trigrams (pg_trgm), guild first
        # (btree_gin). PostgreSQL only: SQLite's text index is an FTS5 table, WORDS_FTS.
        Index(
            "ix_images_words",
            "guild_id",
            "words",
            postgresql_using="gin",
            postgresql_ops={"words": "gin_trgm_ops"},
            postgresql_where=text("words <> ''"),
        ).ddl_if(dialect="postgresql"),
    )


class AuthorGuild(Base):
    """A member who has images stored in a server: how a member's servers are found (an
    opt-out, `/privacy status`) without looking in every server's rows. Written with each
    image; removed with the member's images or the server's. A reference table on Citus (a
    copy on every node): small, one row per member and server, not per image.

    May name a server where the member has no images left (their messages were deleted one by
    one): it is a list of servers to look in, never a count.
    """

    __tablename__ = "author_guilds"

    author_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)

    # Every server the index holds (start-up), and a server's purge.
    __table_args__ = (Index("ix_author_guilds_guild", "guild_id"),)


class IndexJob(Base):
    """An image waiting to be indexed: written before anything depends on it, deleted in the
    transaction that stores its vector, or when it fails for good.

    Consumers claim rows for a lease (``claimed_until``); a consumer that dies simply lets the
    lease run out. ``retry_at`` is when a row may be claimed (again); transient failures move it
    into the future with exponential backoff.
    """

    __tablename__ = "index_jobs"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    guild_id: Mapped[int] = mapped_column(BigInteger)
    channel_id: Mapped[int] = mapped_column(BigInteger)
    parent_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    message_id: Mapped[int] = mapped_column(BigInteger)
    image_key: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    author_id: Mapped[int] = mapped_column(BigInteger)
    posted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # What to download (may be signed and expire) and what to keep.
    url: Mapped[str] = mapped_column(Text)
    source_url: Mapped[str] = mapped_column(Text)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Where a smaller copy can be asked for, and the picture's size in the message (revision
    # 0014); NULL: the picture is downloaded from ``url`` as it is.
    proxy_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # 0 for images posted now, 1 for history and re-indexing: live posts never wait behind a
    # backfill of years.
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retry_at: Mapped[datetime] = mapped_column(UTCDateTime())
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Which work: CLIP_LANE (the vector) or OCR_LANE (the words, read once no vector waits).
    lane: Mapped[str] = mapped_column(String(8), default=CLIP_LANE, server_default=CLIP_LANE)

    __table_args__ = (
        UniqueConstraint("message_id", "image_key", "lane", name="uq_index_jobs_lane"),
        Index("ix_index_jobs_due", "lane", "priority", "retry_at"),
        Index("ix_index_jobs_guild", "guild_id"),
        Index("ix_index_jobs_channel", "channel_id"),
        threads_only("ix_index_jobs_parent"),
        Index("ix_index_jobs_author", "author_id"),
        # The operator's figures: jobs per state and the oldest first try, without a full scan.
        # Not on claimed_until, which every claim and lease renewal rewrites.
        Index("ix_index_jobs_age", "attempts", "created_at"),
    )


class FailedImage(Base):
    """An image whose work failed for good in a way that would fail the same again: bytes that
    are no picture, or too large, or a link Discord refused (revision 0016). Queueing it again
    (an edit of its message, which Discord also sends when a link unfurls; history read again
    after a restart) is refused by the enqueue's statement, so it is neither downloaded nor
    counted twice. Ids only, deleted with its message like a job."""

    __tablename__ = "failed_images"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    image_key: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    lane: Mapped[str] = mapped_column(String(8), primary_key=True)
    # What deletions and the policy's sweep find it by, as they find a job.
    channel_id: Mapped[int] = mapped_column(BigInteger)
    parent_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    author_id: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(40))
    failed_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_failed_images_channel", "channel_id"),
        threads_only("ix_failed_images_parent"),
        Index("ix_failed_images_author", "author_id"),
        Index("ix_failed_images_message", "message_id"),
    )


# Rows keyed by an image that are not its vector: every deletion of images takes them too.
QUEUE_TABLES = (IndexJob, FailedImage)


class IndexFailure(Base):
    """Images that failed for good, counted per server and reason (not kept one by one)."""

    __tablename__ = "index_failures"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    reason: Mapped[str] = mapped_column(String(40), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BotState(Base):
    """Small key/value facts the bot keeps between runs (e.g. the hash of synced commands)."""

    __tablename__ = "bot_state"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class OptOut(Base):
    """A member who asked not to be indexed (in every server the bot shares with them)."""

    __tablename__ = "opt_outs"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    opted_out_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ExcludedChannel(Base):
    """A channel a server's managers took out of the index (its threads go with it)."""

    __tablename__ = "excluded_channels"

    channel_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    guild_id: Mapped[int] = mapped_column(BigInteger, index=True)
    excluded_by: Mapped[int] = mapped_column(BigInteger)
    excluded_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BackfillCursor(Base):
    """How far history of one channel or thread has been read, so a restart resumes there.

    ``oldest_id`` walks back through history until ``complete``; ``newest_id`` is the newest
    message seen, from which messages posted while the bot was offline are caught up.
    """

    __tablename__ = "backfill_cursors"

    channel_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    guild_id: Mapped[int] = mapped_column(BigInteger, index=True)
    oldest_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    newest_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    complete: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class GuildDeparture(Base):
    """When the bot left a server; its vectors are purged once the grace period has passed."""

    __tablename__ = "guild_departures"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    left_at: Mapped[datetime] = mapped_column(UTCDateTime())


class IndexConsumer(Base):
    """A process that takes a lane of the queue (encodes images, or reads their words), as it
    last reported itself (every ~15 s).

    Throughput across the cluster is the sum of the rates of one lane's rows seen lately; a row not
    seen for a few minutes is a process that died, ignored and deleted by the next writer. Not
    guild-scoped: a small reference table.
    """

    __tablename__ = "index_consumers"

    # host:pid:random, so a restarted process (same pid in a fresh container) is a new row.
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # "bot" or "worker"
    host: Mapped[str] = mapped_column(String(255))
    shards: Mapped[str | None] = mapped_column(String(100), nullable=True)
    model_id: Mapped[str] = mapped_column(String(200))
    device: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    images_stored: Mapped[int] = mapped_column(BigInteger, default=0)
    # Images stored per second over the last report interval.
    rate: Mapped[float] = mapped_column(Float, default=0.0)
    # Jobs claimed and not finished: summed, the cluster's claimed jobs, with no scan of the
    # jobs table.
    in_hand: Mapped[int] = mapped_column(Integer, default=0)
    # Why the process is unhealthy (a task of it keeps failing); None while it is healthy.
    problem: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # The lane whose figures the row holds: CLIP_LANE (images stored, by ``model_id``) or
    # OCR_LANE (pictures read, by the OCR model); a process taking both writes a row for each.
    lane: Mapped[str] = mapped_column(String(8), default=CLIP_LANE, server_default=CLIP_LANE)
