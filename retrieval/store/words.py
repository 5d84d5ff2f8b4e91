"""The words read from pictures, kept in their image's row (``images.words``, migration 0013).

Both stores share these statements. The words live and die with their image: every deletion of
an image row (a message, a channel, an opt-out, a purge, the policy's sweep) takes them along, so
no deletion needs to know about them. Writing words is an UPDATE of the image's row, by its key
and its server: an image deleted meanwhile (or never stored) takes no words, and a deletion that
comes second finds the words in the row it deletes. Each statement names its server.

The text is never logged: it is what people posted.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    column,
    func,
    literal_column,
    or_,
    select,
    table,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from retrieval.database.errors import database_errors
from retrieval.database.tables import WORDS_FTS, IndexedImage
from retrieval.store.allowed import stored_permitted
from retrieval.store.base import SearchHit, SearchScope, VectorStore
from retrieval.store.reads import HIT_COLUMNS, hit, in_guild


@dataclass(frozen=True, slots=True)
class PictureWords:
    """What the OCR lane read from one image: normalised lines joined by newlines ('' for none),
    the model that read them, and the lowest confidence among them (None without lines)."""

    guild_id: int
    message_id: int
    image_key: int
    words: str
    model: str
    confidence: float | None = None


# A literal, not a parameter: PostgreSQL matches it with its partial index's predicate.
_NOT_EMPTY = IndexedImage.words != literal_column("''")
# Trigrams: a substring of fewer characters has none to look up, and is tested row by row.
TRIGRAM = 3


def contains(phrase: str, *, dialect: str) -> ColumnElement[bool]:
    """Images whose words hold ``phrase`` (already normalised) as a substring, through the text
    index where the phrase is long enough to have trigrams."""
    short = len(phrase) < TRIGRAM
    value = phrase if short or dialect != "postgresql" else like_pattern(phrase)
    return text_match(value, short=short, dialect=dialect)


def text_match(value, *, short: bool, dialect: str) -> ColumnElement[bool]:
    """`contains` for a value that may be a bound parameter (PostgreSQL's cached statements):
    the phrase itself where ``short`` (tested row by row) or on SQLite, its `like_pattern` for
    PostgreSQL's trigram index."""
    if short:
        position = func.instr if dialect == "sqlite" else func.strpos
        return position(IndexedImage.words, value) > 0
    if dialect == "postgresql":
        # The index's predicate, stated so the planner takes the partial index.
        return and_(_NOT_EMPTY, IndexedImage.words.like(value, escape="\\"))
    return IndexedImage.id.in_(select(_FTS.c.rowid).where(_fts_match([value])))


# SQLite's FTS5 table (no model describes it): its rowid is the image's id, and the column named
# as the table is the one MATCH takes.
_FTS = table(WORDS_FTS, column("rowid"), column(WORDS_FTS))


def _fts_match(phrases: Sequence[str]) -> ColumnElement[bool]:
    """One FTS5 query for pictures holding every phrase: each phrase's trigrams in order (a
    substring), quotes doubled; the index intersects the phrases itself."""
    query = " AND ".join('"' + phrase.replace('"', '""') + '"' for phrase in phrases)
    return _FTS.c[WORDS_FTS].op("MATCH")(query)


def contains_all(phrases: Sequence[str], *, dialect: str) -> list[ColumnElement[bool]]:
    """`contains` for each phrase; on SQLite those long enough for trigrams as one FTS5
    query (one look-up, not one list of row ids per phrase)."""
    if dialect == "postgresql":
        return [contains(phrase, dialect=dialect) for phrase in phrases]
    indexed = [phrase for phrase in phrases if len(phrase) >= TRIGRAM]
    conditions = [contains(phrase, dialect=dialect) for phrase in phrases if len(phrase) < TRIGRAM]
    if indexed:
        conditions.append(IndexedImage.id.in_(select(_FTS.c.rowid).where(_fts_match(indexed))))
    return conditions


@dataclass(frozen=True, slots=True)
class WordsSource:
    """What the OCR lane finds before it reads an image: whether its row is stored (no row: it
    was deleted, or its vector failed for good, and there is nothing to read for), and the
    words already read from the same bytes in the same server by the same OCR model."""

    stored: bool
    known: PictureWords | None = None


# For the rest of the transaction, PostgreSQL plans a statement for its values each time. A
# prepared statement is otherwise planned for any values from its sixth run on, and that generic
# plan can only guess at a server's size and at what a LIKE pattern matches: on the benchmark's
# 1,000 servers a quoted phrase in the 200,000-image one took 420 ms at p50 (benchmarks/RESULTS.md).
CUSTOM_PLANS = text("SELECT set_config('plan_cache_mode', 'force_custom_plan', true)")


def like_pattern(phrase: str) -> str:
    """``phrase`` anywhere, as a LIKE pattern (its own wildcards taken literally)."""
    escaped = phrase.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def lacks(phrase, *, dialect: str) -> ColumnElement[bool]:
    """Images whose words do not hold ``phrase`` (a value or a bound parameter; those not read
    yet included): tested on each row the other conditions keep, never through the index."""
    position = func.instr if dialect == "sqlite" else func.strpos
    return or_(IndexedImage.words.is_(None), position(IndexedImage.words, phrase) == 0)


def in_scope(scope: SearchScope, *, dialect: str) -> list[ColumnElement[bool]]:
    """The scope's server, model and filters as conditions on the images table."""
    conditions = [IndexedImage.guild_id == scope.guild_id, IndexedImage.model_id == scope.model_id]
    if scope.channel_ids is not None:
        conditions.append(IndexedImage.channel_id.in_(sorted(scope.channel_ids)))
    if scope.author_id is not None:
        conditions.append(IndexedImage.author_id == scope.author_id)
    if scope.after is not None:
        conditions.append(IndexedImage.posted_at >= scope.after)
    if scope.before is not None:
        conditions.append(IndexedImage.posted_at < scope.before)
    if scope.exclude_message_id is not None:
        conditions.append(IndexedImage.message_id != scope.exclude_message_id)
    conditions += contains_all(scope.words_all, dialect=dialect)
    conditions += [lacks(phrase, dialect=dialect) for phrase in scope.words_none]
    return conditions


_STORE_WORDS = (
    update(IndexedImage)
    .where(
        IndexedImage.guild_id == bindparam("g"),
        IndexedImage.message_id == bindparam("m"),
        IndexedImage.image_key == bindparam("k"),
        # As every write: nothing for what the policy forbids (a row awaiting its sweep).
        stored_permitted(),
    )
    .values(
        words=bindparam("words"),
        words_model=bindparam("model"),
        words_confidence=bindparam("confidence"),
    )
)


class SharedWords(VectorStore):
    engine: AsyncEngine

    @contextlib.asynccontextmanager
    async def _words_transaction(self) -> AsyncIterator[AsyncConnection]:
        with database_errors():
            async with self.engine.begin() as conn:
                yield conn

    async def store_words(self, readings: Sequence[PictureWords]) -> int:
        """Keep what was read in each image's row; returns how many images took it (one deleted
        or forbidden meanwhile takes none)."""
        if not readings:
            return 0
        rows = [
            {
                "g": r.guild_id,
                "m": r.message_id,
                "k": r.image_key,
                "words": r.words,
                "model": r.model,
                "confidence": r.confidence,
            }
            for r in readings
        ]
        written = 0
        async with self._words_transaction() as conn:
            # One statement per image: executemany's row count is not reliable on every driver.
            for row in rows:
                written += max((await conn.execute(_STORE_WORDS, row)).rowcount, 0)
        return written

    async def words_source(
        self, *, guild_id: int, message_id: int, image_key: int, model: str
    ) -> WordsSource:
        """See `WordsSource`; both look-ups name the server."""
        key = select(IndexedImage.content_hash).where(
            IndexedImage.guild_id == guild_id,
            IndexedImage.message_id == message_id,
            IndexedImage.image_key == image_key,
        )
        async with self._words_transaction() as conn:
            content_hash = (await conn.execute(key)).scalar_one_or_none()
            if content_hash is None:
                return WordsSource(stored=False)
            same = (
                select(IndexedImage.words, IndexedImage.words_confidence)
                .where(
                    IndexedImage.content_hash == content_hash,
                    IndexedImage.guild_id == guild_id,
                    IndexedImage.words_model == model,
                    IndexedImage.words.is_not(None),
                )
                .limit(1)
            )
            row = (await conn.execute(same)).first()
        if row is None:
            return WordsSource(stored=True)
        known = PictureWords(
            guild_id=guild_id,
            message_id=message_id,
            image_key=image_key,
            words=row.words,
            model=model,
            confidence=row.words_confidence,
        )
        return WordsSource(stored=True, known=known)

    async def words_of(
        self, row_ids: Collection[int], *, guild_id: int | None = None
    ) -> dict[int, str]:
        """The words of images by row id, of those read ('' for a picture without any)."""
        if not row_ids:
            return {}
        stmt = select(IndexedImage.id, IndexedImage.words).where(
            IndexedImage.id.in_(sorted(int(i) for i in row_ids)),
            *in_guild(guild_id),
            IndexedImage.words.is_not(None),
        )
        async with self._words_transaction() as conn:
            return {row.id: row.words for row in await conn.execute(stmt)}

    async def words_matching(
        self,
        *,
        scope: SearchScope,
        all_of: Sequence[str],
        none_of: Sequence[str] = (),
        k: int,
    ) -> list[SearchHit]:
        """Up to ``k`` images in ``scope`` whose words hold every phrase of ``all_of`` and none of
        ``none_of`` (normalised phrases), under the policy, newest first; score 1.0 each, and
        ``says`` their whole text (the search cuts it to what matched).

        Where more than ``k`` match (a common word), which ``k`` is the text index's cheapest
        choice, so that a word thousands of pictures say costs ``k`` rows, not thousands: SQLite
        walks the FTS5 matches from the latest stored and stops at ``k``; PostgreSQL reads the
        trigram index's matches in the table's order and stops at ``k``. Fusion can use no more
        (retrieval/search/words.py, `fuse`)."""
        if k <= 0 or not all_of:
            return []
        dialect = self.engine.dialect.name
        # The scope's own phrases are among those looked for: each asked once.
        phrases = list(dict.fromkeys((*scope.words_all, *all_of)))
        excluded = dict.fromkeys((*scope.words_none, *none_of))
        bare = dataclasses.replace(scope, words_all=(), words_none=())
        stmt = select(*HIT_COLUMNS, IndexedImage.words).where(
            *in_scope(bare, dialect=dialect),
            *(lacks(phrase, dialect=dialect) for phrase in excluded),
            stored_permitted(),
        )
        indexed = [phrase for phrase in phrases if len(phrase) >= TRIGRAM]
        if dialect == "sqlite" and indexed:
            # The FTS5 matches drive the join, latest first, and the LIMIT ends the walk.
            stmt = (
                stmt.select_from(_FTS.join(IndexedImage, IndexedImage.id == _FTS.c.rowid))
                .where(_fts_match(indexed))
                .where(*(contains(p, dialect=dialect) for p in phrases if len(p) < TRIGRAM))
                .order_by(_FTS.c.rowid.desc())
            )
        else:
            stmt = stmt.where(*contains_all(phrases, dialect=dialect))
        async with self._words_transaction() as conn:
            if dialect == "postgresql":
                await conn.execute(CUSTOM_PLANS)
            rows = (await conn.execute(stmt.limit(k))).all()
        rows.sort(key=lambda row: (row.posted_at, row.id), reverse=True)
        return [hit(row, 1.0, says=row.words) for row in rows]

    async def rows_saying(
        self, *, guild_id: int, model_id: str, all_of: Sequence[str]
    ) -> frozenset[int]:
        """Row ids of a server's images of a model whose words hold every phrase of ``all_of``,
        through the text index: how a search that ranks in memory (SQLite's matrices) keeps
        to the pictures saying a quoted phrase."""
        stmt = select(IndexedImage.id).where(
            IndexedImage.guild_id == guild_id,
            IndexedImage.model_id == model_id,
            *contains_all(all_of, dialect=self.engine.dialect.name),
        )
        async with self._words_transaction() as conn:
            return frozenset((await conn.execute(stmt)).scalars())

    async def forget_words(self, *, guild_id: int) -> int:
        """Drop every word read in one server (reading was turned off); returns images changed.
        Their pictures become unread, so turning reading on again reads them anew."""
        stmt = (
            update(IndexedImage)
            .where(IndexedImage.guild_id == guild_id, IndexedImage.words.is_not(None))
            .values(words=None, words_model=None, words_confidence=None)
        )
        async with self._words_transaction() as conn:
            return max((await conn.execute(stmt)).rowcount, 0)


__all__ = ["PictureWords", "SharedWords", "WordsSource"]
