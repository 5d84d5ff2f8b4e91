"""Unit tests for the pure search logic in retrieval/search.py."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from retrieval.search import (
    ROUNDS,
    BadQuery,
    ResultGroup,
    ResultPager,
    arranger,
    collapse_reposts,
    date_range,
    fit_query,
    ordered,
    parse_when,
    relevance_floor,
)
from retrieval.store import SearchHit

T0 = datetime(2025, 3, 1, 12, tzinfo=UTC)


def hit(row_id: int, score: float = 0.5, *, days: float = 0, content_hash: str = "") -> SearchHit:
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
        content_hash=content_hash or f"hash-{row_id}",
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

    async def arrange(hits):
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


async def test_every_turn_searches_again_and_what_left_the_store_leaves_every_page():
    index = Index(10)
    pager = index.pager(3)
    assert rows(await pager.page(0)) == [0, 1, 2] and pager.known_total == 10
    assert rows(await pager.page(1)) == [3, 4, 5]
    # Deleted, opted out, excluded or hidden since: the store no longer gives them.
    index.hits = [h for h in index.hits if h.row_id not in {1, 4}]
    assert rows(await pager.page(0)) == [0, 2, 3] and pager.known_total == 8
    assert rows(await pager.page(1)) == [5, 6, 7]
    assert index.fetches == [200] * 4


async def test_a_page_turned_back_to_is_confirmed_again():
    index = Index(10)
    pager = index.pager(2)
    await pager.page(0)
    await pager.page(1)
    index.confirmed.clear()
    index.gone.add(0)  # deleted while the bot was away: only a confirmation can tell
    assert rows(await pager.page(0)) == [1, 2]
    assert index.confirmed[:2] == [0, 1]


async def test_results_before_the_page_keep_their_places_unasked():
    index = Index(20, gone={2})
    pager = index.pager(4)
    assert rows(await pager.page(0)) == [0, 1, 3, 4]
    index.confirmed.clear()
    # Row 2 failed on the first turn and stays dropped; 0, 1, 3, 4 were confirmed then.
    assert rows(await pager.page(1)) == [5, 6, 7, 8]
    assert index.confirmed == [5, 6, 7, 8]
    index.hits.insert(1, hit(99, 0.9995))  # a new image ranking on page 0
    index.confirmed.clear()
    assert rows(await pager.page(1)) == [4, 5, 6, 7]
    assert index.confirmed == [99, 4, 5, 6, 7]  # the newcomer first, so its place is known


async def test_candidates_unchanged_since_the_last_turn_are_grouped_without_their_vectors():
    hits = [hit(1, 0.9, content_hash="same"), hit(2, 0.8), hit(3, 0.7, content_hash="same")]

    class Vectors:
        calls = 0

        async def vectors(self, row_ids, *, guild_id=None):
            self.calls += 1
            return {}

        async def words_of(self, row_ids, *, guild_id=None):
            return {}

    store = Vectors()
    arrange = arranger(store, "relevance")
    first = await arrange(hits)
    again = await arrange([replace(h, filename="renamed.png") for h in hits])
    assert [[h.row_id for h in g.members] for g in again] == [[1, 3], [2]]
    assert [[h.row_id for h in g.members] for g in first] == [[1, 3], [2]]
    assert again[0].hit.filename == "renamed.png"  # the fresh rows, grouped as before
    assert store.calls == 1
    await arrange(hits[:2])  # other candidates: grouped afresh
    assert store.calls == 2


# -- dates ---------------------------------------------------------------------------------

NOW = datetime(2025, 3, 10, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
        ("3 days ago", NOW - timedelta(days=3)),
        ("12h", NOW - timedelta(hours=12)),
        ("1mo", NOW - timedelta(days=30)),
        ("1Y", NOW - timedelta(days=365)),
        ("today", datetime(2025, 3, 10, tzinfo=UTC)),
        ("Yesterday", datetime(2025, 3, 9, tzinfo=UTC)),
        ("2025-03-01", datetime(2025, 3, 1, tzinfo=UTC)),
        ("2025-03-01 18:45", datetime(2025, 3, 1, 18, 45, tzinfo=UTC)),
        ("2025-03-01T18:45+02:00", datetime(2025, 3, 1, 16, 45, tzinfo=UTC)),
    ],
)
def test_dates_and_how_long_ago(text, expected):
    assert parse_when(text, now=NOW) == expected


@pytest.mark.parametrize(
    "text", ["next tuesday", "7x", "2025-13-01", "", "-3d", "soon", "2999y", "9999 years ago"]
)
def test_unreadable_dates_say_what_would_work(text):
    with pytest.raises(BadQuery, match="7d"):
        parse_when(text, now=NOW)


def test_a_date_range_must_run_forwards():
    assert date_range("2w", "7d", now=NOW) == (NOW - timedelta(weeks=2), NOW - timedelta(days=7))
    assert date_range(None, "yesterday", now=NOW) == (None, datetime(2025, 3, 9, tzinfo=UTC))
    with pytest.raises(BadQuery, match="earlier"):
        date_range("7d", "2w", now=NOW)


# -- query text ----------------------------------------------------------------------------


def words(text: str) -> int:
    return len(text.split()) + 2  # like CLIP: start and end tokens


def test_a_query_that_fits_is_kept():
    assert fit_query("a red circle", words, 77) == ("a red circle", False)


def test_a_long_query_keeps_the_leading_words_that_fit():
    text = " ".join(f"w{i}" for i in range(100))
    cut, was_cut = fit_query(text, words, 77)
    assert was_cut and cut == " ".join(f"w{i}" for i in range(75))


def test_an_encoder_that_cannot_count_cuts_nothing():
    assert fit_query("x " * 500, lambda t: 0, 77)[1] is False


# -- order ---------------------------------------------------------------------------------


def test_date_sorts_keep_only_results_near_the_best():
    hits = [hit(1, 0.9, days=1), hit(2, 0.8, days=5), hit(3, 0.5, days=9), hit(4, 0.86, days=3)]
    assert [h.row_id for h in ordered(hits, "relevance")] == [1, 4, 2, 3]
    assert [h.row_id for h in ordered(hits, "newest")] == [2, 4, 1]
    assert [h.row_id for h in ordered(hits, "oldest")] == [1, 4, 2]
    assert ordered([], "newest") == []


def test_the_floor_is_relative_to_the_best_score_whatever_its_sign():
    assert relevance_floor(0.3) == pytest.approx(0.255)
    assert relevance_floor(-0.2) == pytest.approx(-0.23)


# -- reposts -------------------------------------------------------------------------------


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_same_bytes_and_near_identical_vectors_collapse_into_the_first():
    a = hit(1, 0.9, days=5, content_hash="same")
    b = hit(2, 0.7, days=1, content_hash="same")  # same bytes, far-off vector (e.g. none yet)
    c = hit(3, 0.85, days=3)  # a re-encode of a
    d = hit(4, 0.8, days=0)  # a different picture
    vectors = {1: unit(1, 0, 0), 2: unit(0, 0, 1), 3: unit(1, 0.05, 0), 4: unit(1, 0.5, 0)}
    groups = collapse_reposts([a, c, d, b], vectors, threshold=0.995)
    assert [[h.row_id for h in g.members] for g in groups] == [[1, 3, 2], [4]]
    assert groups[0].earliest is b
    assert groups[1].earliest is d and not groups[1].reposts


def test_hits_without_a_vector_still_group_by_bytes():
    groups = collapse_reposts([hit(1, content_hash="x"), hit(2, content_hash="x")], {})
    assert [len(g.members) for g in groups] == [2]


def grouping_by_definition(hits, vectors, threshold):
    """The grouping rule spelled out, quadratic and slow: a hit joins the group of an earlier
    hit with its bytes, else of the most similar earlier group head at or above threshold."""
    groups, heads = [], []  # heads: (vector, group index) of groups that started with one
    hash_group = {}
    for h in hits:
        at = hash_group.get(h.content_hash)
        vector = vectors.get(h.row_id)
        if at is None and vector is not None and heads:
            similarity = np.stack([v for v, _ in heads]) @ vector
            best = int(np.argmax(similarity))
            at = heads[best][1] if similarity[best] >= threshold else None
        if at is None:
            at = len(groups)
            groups.append([])
            if vector is not None:
                heads.append((vector, at))
        groups[at].append(h.row_id)
        hash_group.setdefault(h.content_hash, at)
    return groups


def test_eight_hundred_candidates_group_by_picture_in_rank_order():
    """A deep page: 800 candidates, 200 pictures posted up to seven times each (same bytes,
    or re-encoded), some without a stored vector."""
    rng = np.random.default_rng(11)
    pictures = rng.normal(size=(200, 512)).astype(np.float32)
    pictures /= np.linalg.norm(pictures, axis=1, keepdims=True)
    picture_of = np.concatenate([np.arange(200), rng.integers(0, 200, 600)])
    rng.shuffle(picture_of)
    hits, vectors = [], {}
    for row, picture in enumerate(picture_of):
        same_bytes = rng.random() < 0.3
        hits.append(hit(row, 1 - row / 1000, content_hash=f"p{picture}" if same_bytes else ""))
        if rng.random() < 0.9:  # re-encodes score 0.999 and more against their picture
            copy = pictures[picture] + 0.002 * rng.normal(size=512).astype(np.float32)
            vectors[row] = copy / np.linalg.norm(copy)
    groups = collapse_reposts(hits, vectors, threshold=0.995)

    assert [[h.row_id for h in g.members] for g in groups] == grouping_by_definition(
        hits, vectors, 0.995
    )
    # Every group is one picture, shown where its best-ranked copy ranks.
    assert all(len({int(picture_of[h.row_id]) for h in g.members}) == 1 for g in groups)
    assert rows(groups) == sorted(rows(groups))
    assert all(g.hit.row_id < r.row_id for g in groups for r in g.reposts)
    # A picture splits only where vectors cannot tie its copies: a group compares by the
    # vector of its first copy, so a later group of the same picture starts without a vector
    # or follows only groups that started without one.
    by_picture = {}
    for g in groups:
        by_picture.setdefault(int(picture_of[g.hit.row_id]), []).append(g)
    for split in (gs for gs in by_picture.values() if len(gs) > 1):
        for at, g in enumerate(split[1:], start=1):
            assert g.hit.row_id not in vectors or all(
                other.hit.row_id not in vectors for other in split[:at]
            )
    assert 200 <= len(groups) < 300


def test_borderline_similarities_group_as_defined():
    """Near the threshold every comparison counts: clustered vectors, many pairs within a
    hair of it, same answer as the rule spelled out."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(40, 64)).astype(np.float32)
    x = centres[rng.integers(0, 40, 600)] + 0.07 * rng.normal(size=(600, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    hits = [hit(i, 1 - i / 1000, content_hash=f"h{i % 450}") for i in range(600)]
    vectors = {i: x[i] for i in range(600) if i % 17}
    threshold = float(np.median((x[:50] @ x[50:100].T).max(axis=1)))
    groups = collapse_reposts(hits, vectors, threshold=threshold)
    expected = grouping_by_definition(hits, vectors, threshold)
    assert [[h.row_id for h in g.members] for g in groups] == expected
    assert 1 < len(groups) < 500


async def test_reposts_the_member_may_not_know_of_are_neither_counted_nor_linked():
    shown, hidden, visible = hit(1, 0.9), hit(2, 0.9, days=-3), hit(3, 0.9, days=2)

    async def fetch(k):
        return [shown, hidden, visible]

    async def arrange(hits):
        return [ResultGroup(shown, (hidden, visible))]

    async def confirm(hits):
        return [True] * len(hits)

    async def screen(hits):
        return [h is not hidden for h in hits]

    pager = ResultPager(fetch=fetch, confirm=confirm, screen=screen, arrange=arrange, page_size=5)
    (group,) = await pager.page(0)
    assert group.reposts == (visible,) and group.earliest is shown
