"""How candidates are ordered (relevance, or date above a relevance floor) and how reposts of one
picture collapse into one result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from retrieval.store.base import SearchHit, VectorStore

# Cosine similarity above which two pictures count as one reposted picture. Measured with the
# tiny test model (tests/unit/test_search_quality.py): re-encodes and resizes of one picture score
# 0.985-1.0 (97.5% above 0.995); different drawings of one caption reach 0.9956 (1 in 720 pairs
# above 0.995). Real CLIP models spread distinct pictures much further apart, so this is
# conservative there; identical bytes are always caught by their content hash.
DUPLICATE_SIMILARITY = 0.995
# Date-sorted results keep only candidates scoring within 15% of the best: measured on the tiny
# model, 99.4% of pictures of the asked caption stay and 0.1 others per query slip in.
RELEVANCE_FLOOR = 0.85

Sort = Literal["relevance", "newest", "oldest"]


@dataclass(frozen=True, slots=True)
class ResultGroup:
    """One picture as shown, with its reposts (the same picture posted again)."""

    hit: SearchHit
    reposts: tuple[SearchHit, ...] = ()

    @property
    def members(self) -> tuple[SearchHit, ...]:
        return (self.hit, *self.reposts)

    @property
    def earliest(self) -> SearchHit:
        return min(self.members, key=lambda h: (h.posted_at, h.message_id))

    def promoted(self) -> ResultGroup | None:
        """The group with its next copy shown, for when the shown one is gone."""
        if not self.reposts:
            return None
        return ResultGroup(self.reposts[0], self.reposts[1:])


Arrange = Callable[[list[SearchHit]], Awaitable[list[ResultGroup]]]


async def one_per_hit(hits: list[SearchHit]) -> list[ResultGroup]:
    return [ResultGroup(hit) for hit in hits]


def relevance_floor(best: float, ratio: float = RELEVANCE_FLOOR) -> float:
    # Relative to the best score: absolute scores differ a lot between models.
    return best - (1 - ratio) * abs(best)


def ordered(hits: Sequence[SearchHit], sort: Sort, ratio: float = RELEVANCE_FLOOR):
    """Hits by relevance, or by date among those relevant enough to be worth dating."""
    by_score = sorted(hits, key=lambda h: -h.score)
    if sort == "relevance" or not by_score:
        return by_score
    if any(h.says for h in by_score):
        # The words were searched too: the scores are ranks fused (retrieval/search/words.py),
        # not similarities. What the text found is relevant; the rest by CLIP's own floor.
        similar = [h.similarity for h in by_score if h.similarity is not None]
        floor = relevance_floor(max(similar), ratio) if similar else 0.0
        kept = [h for h in by_score if h.says or (h.similarity or -1.0) >= floor]
    else:
        floor = relevance_floor(by_score[0].score, ratio)
        kept = [h for h in by_score if h.score >= floor]
    return sorted(kept, key=lambda h: (h.posted_at, h.message_id), reverse=sort == "newest")


def collapse_reposts(
    hits: Sequence[SearchHit],
    vectors: Mapping[int, np.ndarray],
    threshold: float = DUPLICATE_SIMILARITY,
    words: Mapping[int, str] | None = None,
) -> list[ResultGroup]:
    """Group copies of one picture (same bytes, or vectors above ``threshold``), keeping order.

    Two pictures whose words were read and differ are never copies, however alike they look:
    screenshots of one app, memes on one template. ``words`` holds the words of those read
    (`VectorStore.words_of`).

    Each group is shown where its first member ranks; the others become its reposts. CPU work
    that grows with the square of the candidates (800 of them: tens of milliseconds), so the
    arranger runs it in a worker thread.
    """
    groups: list[list[SearchHit]] = []
    by_hash: dict[str, int] = {}
    # The first vector of each group that has one, in rows filled as groups start: compared
    # with one product per hit, never re-stacked.
    heads: np.ndarray | None = None
    head_groups: list[int] = []
    for hit in hits:
        at = by_hash.get(hit.content_hash) if hit.content_hash else None
        vector = vectors.get(hit.row_id)
        if at is None and vector is not None and head_groups:
            similarity = heads[: len(head_groups)] @ vector
            best = int(np.argmax(similarity))
            at = head_groups[best] if similarity[best] >= threshold else None
            if at is not None and not _same_words(words, hit, groups[at][0]):
                at = None
        if at is None:
            at = len(groups)
            groups.append([])
            if vector is not None:
                if heads is None:
                    heads = np.empty((len(hits), len(vector)), dtype=vector.dtype)
                heads[len(head_groups)] = vector
                head_groups.append(at)
        groups[at].append(hit)
        if hit.content_hash:
            by_hash.setdefault(hit.content_hash, at)
    return [ResultGroup(group[0], tuple(group[1:])) for group in groups]


def _same_words(words: Mapping[int, str] | None, a: SearchHit, b: SearchHit) -> bool:
    """Whether two pictures may be one as far as their words tell (unread ones may)."""
    if not words:
        return True
    said_a, said_b = words.get(a.row_id), words.get(b.row_id)
    return said_a is None or said_b is None or said_a == said_b


def arranger(store: VectorStore, sort: Sort, threshold: float = DUPLICATE_SIMILARITY) -> Arrange:
    """Order candidates and collapse reposts, reading their vectors from the store.

    Every page turn arranges its candidates again; when they are the ones of the last call
    (same rows, scores, dates and hashes, in the same order), their grouping is that of the
    last call too, so it is reused without reading their vectors again."""
    last: tuple[tuple, list[tuple[int, ...]]] | None = None

    async def arrange(hits: list[SearchHit]) -> list[ResultGroup]:
        nonlocal last
        ranked = ordered(hits, sort)
        if not ranked:
            return []
        key = tuple((h.row_id, h.score, h.posted_at, h.content_hash) for h in ranked)
        if last is not None and last[0] == key:
            by_id = {h.row_id: h for h in ranked}
            return [ResultGroup(by_id[g[0]], tuple(by_id[r] for r in g[1:])) for g in last[1]]
        guilds = {h.guild_id for h in ranked}
        ids, guild_id = [h.row_id for h in ranked], guilds.pop() if len(guilds) == 1 else None
        vectors = await store.vectors(ids, guild_id=guild_id)
        words = await store.words_of(ids, guild_id=guild_id)
        groups = await asyncio.to_thread(collapse_reposts, ranked, vectors, threshold, words)
        last = (key, [tuple(h.row_id for h in g.members) for g in groups])
        return groups

    return arrange
