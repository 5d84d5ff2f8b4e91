"""Unit tests for the pure search logic in retrieval/search.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from retrieval.search import ROUNDS, ResultGroup, ResultPager
from retrieval.store import SearchHit

T0 = datetime(2025, 3, 1, 12, tzinfo=UTC)


def hit(row_id: int, score: float = 0.5, *, days: float = 0) -> SearchHit:
    return SearchHit(
        row_id=row_id,
        score=score,
        guild_id=1,
        channel_id=2,
        message_id=1000 + row_id,
        image_key=row_id,
        kind="attachment",
        author_id=3,
        posted_at=T0 + timedelta(days=days),
        filename=f"{row_id}.png",
        source_url=f"https://cdn/{row_id}.png",
        content_type="image/png",
    )


class Index:
    """A store stand-in: ``n`` hits by falling score; counts fetches and confirmations."""

    def __init__(self, n: int, gone: set[int] = frozenset()) -> None:
        self.hits = [hit(i, 1 - i / 1000) for i in range(n)]
        self.gone = set(gone)
        self.fetches: list[int] = []
        self.confirmed: list[int] = []

    async def fetch(self, k: int) -> list[SearchHit]:
        self.fetches.append(k)
        return self.hits[:k]

    async def confirm(self, hits) -> list[bool]:
        self.confirmed += [h.row_id for h in hits]
        return [h.row_id not in self.gone for h in hits]

    def pager(self, page_size: int, **options) -> ResultPager:
        return ResultPager(fetch=self.fetch, confirm=self.confirm, page_size=page_size, **options)


def rows(groups: list[ResultGroup]) -> list[int]:
    return [g.hit.row_id for g in groups]


async def test_a_page_tops_up_from_the_candidates_behind_it():
    index = Index(50, gone={0, 2, 3})
    pager = index.pager(3)
    assert rows(await pager.page(0)) == [1, 4, 5]
    # Only what the page needed was confirmed: 3, then the 2 missing, then the last one.
    assert index.confirmed == [0, 1, 2, 3, 4, 5]
    assert rows(await pager.page(1)) == [6, 7, 8]


async def test_paging_walks_everything_once_and_stops_at_the_end():
    index = Index(12, gone={5})
    pager = index.pager(5)
    seen = []
    page = 0
    while pager.has_page(page):
        seen += rows(await pager.page(page))
        page += 1
    assert seen == [i for i in range(12) if i != 5]
    assert page == 3 and not pager.may_have_more
    assert await pager.page(7) == []


async def test_confirmation_per_page_is_bounded_even_when_most_is_gone():
    index = Index(200, gone=set(range(150)))
    pager = index.pager(5, candidates=50)
    first = await pager.page(0)
    assert len(index.confirmed) <= ROUNDS * 5
    assert len(first) < 5  # short rather than unbounded; the next page carries on
    more = await pager.page(1)
    assert all(g.hit.row_id >= 150 for g in first + more)


async def test_more_candidates_are_fetched_when_the_first_batch_runs_dry():
    index = Index(30, gone={0, 1, 2, 3})
    pager = index.pager(4, candidates=5)
    assert rows(await pager.page(0)) == [4, 5, 6, 7]
    assert index.fetches == [5, 10]


async def test_a_gone_picture_hands_over_to_its_repost_in_place():
    original, repost, other = hit(1, 0.9), hit(2, 0.9, days=3), hit(3, 0.8)

    async def fetch(k):
        return [original, repost, other]

    async def confirm(hits):
        return [h is not original for h in hits]

    def arrange(hits):
        return [ResultGroup(original, (repost,)), ResultGroup(other)]

    pager = ResultPager(fetch=fetch, confirm=confirm, page_size=2, arrange=arrange)
    assert rows(await pager.page(0)) == [2, 3]


@pytest.mark.parametrize("limit", [7])
async def test_never_more_than_the_limit(limit):
    index = Index(50)
    pager = index.pager(5, limit=limit)
    assert len(await pager.page(0)) == 5
    assert len(await pager.page(1)) == 2
    assert not pager.has_page(2)
