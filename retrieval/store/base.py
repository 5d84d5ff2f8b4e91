"""The vector store: one abstract base that the SQLite and PostgreSQL stores implement, with the
reads and deletions both share (`reads.SharedReads`, `deletes.SharedDeletes`) written once on top
of three hooks each store gives (`_reader`, `_delete`, `_delete_in`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, Executable

    from retrieval.shards import Shards
    from retrieval.store.words import PictureWords, WordsSource


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One encoded image, ready to write."""

    guild_id: int
    channel_id: int
    message_id: int
    image_key: int
    kind: str
    author_id: int
    posted_at: datetime
    filename: str
    source_url: str
    content_type: str
    content_hash: str
    model_id: str
    embedding: np.ndarray = field(repr=False)
    parent_id: int | None = None  # the channel of a thread


@dataclass(frozen=True, slots=True)
class SearchHit:
    row_id: int
    score: float
    guild_id: int
    channel_id: int
    message_id: int
    image_key: int
    kind: str
    author_id: int
    posted_at: datetime
    filename: str
    source_url: str
    content_type: str
    # Equal hashes mean the same bytes: a repost, shown once in results.
    content_hash: str = ""
    # What the picture says around the words a search found in it ("" when not found by them).
    says: str = ""
    # With the words searched too, ``score`` ranks both sides fused; this is CLIP's cosine
    # (None: found by its words alone).
    similarity: float | None = None


@dataclass(frozen=True, slots=True)
class SearchScope:
    """Where a search may look. ``channel_ids`` None means every channel of the guild.

    The caller computes the channels from the asking member's permissions at query time; the
    store only enforces what it is given.
    """

    guild_id: int
    model_id: str
    channel_ids: frozenset[int] | None = None
    author_id: int | None = None
    after: datetime | None = None
    before: datetime | None = None
    # "Find similar" leaves the message it started from out of its own results.
    exclude_message_id: int | None = None
    # Phrases the words read from a picture must hold, and phrases they must not (normalised:
    # retrieval/encoding/textnorm.py); applied inside the search, as the other filters.
    words_all: tuple[str, ...] = ()
    words_none: tuple[str, ...] = ()


class VectorStore(ABC):
    @abstractmethod
    async def upsert(
        self, records: Sequence[ImageRecord], *, job_ids: Sequence[int | None] | None = None
    ) -> int:
        """Insert or replace by (message_id, image_key), except what the policy tables forbid
        (checked by the same statement); returns rows written. With ``job_ids`` (one per record,
        None for none), each record's queued job is deleted in the same transaction, and a
        record whose job no longer exists is not written (what it covered was deleted)."""

    @abstractmethod
    async def known_keys(
        self, message_id: int, model_id: str | None = None, *, guild_id: int | None = None
    ) -> set[int]:
        """Image keys already stored for a message, by any model or by ``model_id`` (lets
        re-delivery skip the download, and a re-index redo only what another model encoded).

        Here and below, ``guild_id`` (the message's, channel's or row's server) routes the
        statement to one server's rows; the bot always gives it. Without it every server's rows
        are looked in (through the same index), which a distributed PostgreSQL answers on every
        machine."""

    @abstractmethod
    async def embedding_for(
        self, content_hash: str, model_id: str, *, guild_id: int | None = None
    ) -> np.ndarray | None:
        """A stored vector of the same bytes under the same model, so they are encoded once
        (in any guild, or in ``guild_id``'s)."""

    @abstractmethod
    async def embeddings_for(
        self, content_hashes: Collection[str], model_id: str
    ) -> dict[str, np.ndarray]:
        """`embedding_for` of many hashes in one query: those found, by hash."""

    @abstractmethod
    async def search(self, query: np.ndarray, *, scope: SearchScope, k: int) -> list[SearchHit]:
        """The k best hits by cosine similarity, filters applied inside the search."""

    @abstractmethod
    async def vectors(
        self, row_ids: Collection[int], *, guild_id: int | None = None
    ) -> dict[int, np.ndarray]:
        """Stored vectors by row id (to tell near-identical results apart from similar ones)."""

    @abstractmethod
    async def message_vectors(
        self, message_id: int, model_id: str, *, guild_id: int | None = None
    ) -> dict[int, np.ndarray]:
        """A message's vectors by image key: a query by an indexed image skips the model."""

    @abstractmethod
    async def model_counts(self, *, other_than: str | None = None) -> dict[str, int]:
        """Stored vectors per model id (vectors of another model are never searched), leaving
        ``other_than`` out (the configured model: nearly every row, not counted)."""

    @abstractmethod
    async def count(
        self,
        *,
        guild_id: int,
        model_id: str | None = None,
        channel_ids: Collection[int] | None = None,
    ) -> int:
        """Stored images of a guild, of one model and in some channels where given."""

    @abstractmethod
    async def count_author(self, *, author_id: int, guild_id: int | None = None) -> int:
        """Images of one author, in one guild or (None) in every guild listed for them in
        `author_guilds`: what a member asks about."""

    @abstractmethod
    async def author_guild_ids(self, author_id: int) -> list[int]:
        """The guilds where ``author_id`` may have images stored (a superset)."""

    @abstractmethod
    async def channel_ids(self, *, guild_id: int) -> set[int]:
        """Channels and threads of a guild that have stored images (to find orphaned threads)."""

    @abstractmethod
    async def guild_ids(self) -> set[int]:
        """Guilds that have stored images (to notice servers the bot left while offline), from
        `author_guilds`: may include a guild whose images were all deleted one by one."""

    @abstractmethod
    async def delete_messages(
        self, message_ids: Collection[int], *, guild_id: int | None = None
    ) -> int:
        """Remove the messages' images (and queued jobs)."""

    @abstractmethod
    async def delete_images(
        self, message_id: int, keep_keys: Collection[int], *, guild_id: int | None = None
    ) -> int:
        """Remove a message's images whose keys are not in ``keep_keys`` (an edit removed them)."""

    @abstractmethod
    async def delete_channels(
        self, channel_ids: Collection[int], *, guild_id: int | None = None
    ) -> int:
        """Remove the channels' and threads' images (and queued jobs)."""

    @abstractmethod
    async def delete_other_models(
        self,
        channel_id: int,
        model_id: str,
        *,
        since_message_id: int | None = None,
        guild_id: int | None = None,
    ) -> int:
        """A channel's rows of models other than ``model_id`` (after its re-index); with
        ``since_message_id``, only those of messages from that id on (what the re-index read)."""

    @abstractmethod
    async def delete_guild(self, guild_id: int) -> int:
        """Remove everything of a server (the bot left it for good)."""

    @abstractmethod
    async def delete_forbidden(self, *, shards: Shards | None = None) -> int:
        """Rows the policy tables forbid (opted-out authors, excluded channels and their threads)
        that got in before the policy did: a race between processes, or a crash. With
        ``shards``, only those of the servers they cover."""

    @abstractmethod
    async def delete_author(self, *, guild_id: int | None, author_id: int) -> int:
        """A member's images (and queued jobs) in one guild, or (None) in every guild, guild by
        guild."""

    # -- the words read from pictures (retrieval/store/words.py) ----------------------------

    @abstractmethod
    async def store_words(self, readings: Sequence[PictureWords]) -> int:
        """Keep what the OCR lane read, in each image's row; returns the images that took it."""

    @abstractmethod
    async def words_source(
        self, *, guild_id: int, message_id: int, image_key: int, model: str
    ) -> WordsSource:
        """Whether an image is stored, and words read before from the same bytes."""

    @abstractmethod
    async def words_of(
        self, row_ids: Collection[int], *, guild_id: int | None = None
    ) -> dict[int, str]:
        """The words kept for images, by row id (those read; '' for none in the picture)."""

    @abstractmethod
    async def words_matching(
        self,
        *,
        scope: SearchScope,
        all_of: Sequence[str],
        none_of: Sequence[str] = (),
        k: int,
    ) -> list[SearchHit]:
        """Images in ``scope`` whose words hold every phrase of ``all_of`` and none of
        ``none_of``: the text side of a search."""

    @abstractmethod
    async def count_words(self, *, author_id: int, guild_id: int | None = None) -> int:
        """A member's images whose words are kept, in one server or every server."""

    @abstractmethod
    async def forget_words(self, *, guild_id: int) -> int:
        """Drop the words read in one server (reading turned off)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop the store's own tasks (PostgreSQL's index keeper)."""

    # -- the hooks the shared reads and deletions stand on --------------------------------

    @abstractmethod
    def _reader(self) -> AbstractAsyncContextManager:
        """Yields a session or connection (anything with ``execute``) whose database errors are
        already `StoreUnavailable`."""

    @abstractmethod
    async def _delete(
        self,
        where: Callable[[type], list[ColumnElement[bool]]],
        *,
        jobs: bool = True,
        images: bool = True,
        also: Sequence[Executable] = (),
    ) -> int:
        """Run ``where(table)`` (conditions on the images table, or on the jobs table and the
        images failed for good, which have the same id columns: ``jobs``) as deletions, then the
        statements ``also``, in one transaction; returns the images deleted."""

    @abstractmethod
    async def _delete_in(
        self, name: str, values: Collection[int], *, guild_id: int | None = None
    ) -> int:
        """Delete the rows whose column ``name`` is one of ``values`` (long id lists)."""
