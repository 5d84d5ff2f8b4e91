"""What a search returns, in which order, and how it is paged, with no Discord in sight.

The store answers from the index, which can be stale: a message may have been deleted while the
bot was offline. So the pager asks the store for more candidates than it shows, has the caller
confirm each one just before it is shown (``confirm`` does the Discord look-ups), and tops a
page up from the candidates behind it. Every page is worked out afresh, forward and back: the
store is asked again, under the policy and in the channels the member may read at that moment.
Before paging, candidates are ordered (relevance, or date above a relevance floor) and reposts
of one picture are collapsed into one result.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np

from retrieval.encoding import EncoderService
from retrieval.images import NotAnImage, PreprocessSpec, prepare, sniff_image_type
from retrieval.store.base import SearchHit, SearchScope, VectorStore

# Discord shows at most 10 embeds per message; 100 results is ten full pages, and more is noise.
MAX_RESULTS = 100
# Candidates asked of the store at first: a reserve for results that turn out gone or hidden,
# and for reposts that collapse into one result.
CANDIDATES = 200
MAX_CANDIDATES = 800
# Confirmation rounds per page. Each round confirms only what the page still lacks, so one page
# costs at most ROUNDS x page size look-ups however much of the index is stale.
ROUNDS = 4
# Cosine similarity above which two pictures count as one reposted picture. Measured with the
# tiny test model (tests/test_search_quality.py): re-encodes and resizes of one picture score
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


Fetch = Callable[[int], Awaitable[list[SearchHit]]]
Confirm = Callable[[Sequence[SearchHit]], Awaitable[Sequence[bool]]]
Arrange = Callable[[list[SearchHit]], Awaitable[list[ResultGroup]]]


def from_store(store: VectorStore, query: np.ndarray, scope: SearchScope) -> Fetch:
    async def fetch(k: int) -> list[SearchHit]:
        return await store.search(query, scope=scope, k=k)

    return fetch


@dataclass(frozen=True, slots=True)
class Question:
    """What was asked, apart from where it may look: asked of the store again each time the
    channels the member may read are worked out again (every page turn)."""

    store: VectorStore
    query: np.ndarray
    scope: SearchScope  # the filters; the channels are given per search

    async def search(self, channel_ids: Collection[int], k: int) -> list[SearchHit]:
        scope = replace(self.scope, channel_ids=frozenset(channel_ids))
        return await self.store.search(self.query, scope=scope, k=k)

    async def channels_holding(
        self, channel_ids: Collection[int], k: int = CANDIDATES
    ) -> list[int]:
        """Which of ``channel_ids`` hold any of the ``k`` best matches among them, best first.

        Asked about private threads whose membership is unknown, so that Discord is asked only
        about those worth it before they are searched; nothing found here is ever shown."""
        if not channel_ids:
            return []
        hits = await self.search(channel_ids, k)
        return list(dict.fromkeys(h.channel_id for h in hits))


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
    floor = relevance_floor(by_score[0].score, ratio)
    kept = [h for h in by_score if h.score >= floor]
    return sorted(kept, key=lambda h: (h.posted_at, h.message_id), reverse=sort == "newest")


def collapse_reposts(
    hits: Sequence[SearchHit],
    vectors: Mapping[int, np.ndarray],
    threshold: float = DUPLICATE_SIMILARITY,
) -> list[ResultGroup]:
    """Group copies of one picture (same bytes, or vectors above ``threshold``), keeping order.

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
        vectors = await store.vectors(
            [h.row_id for h in ranked], guild_id=guilds.pop() if len(guilds) == 1 else None
        )
        groups = await asyncio.to_thread(collapse_reposts, ranked, vectors, threshold)
        last = (key, [tuple(h.row_id for h in g.members) for g in groups])
        return groups

    return arrange


@dataclass(eq=False)
class _Turn:
    """One page turn's walk through the candidates, from the top."""

    results: list[ResultGroup] = field(default_factory=list)
    pending: deque[ResultGroup] = field(default_factory=deque)
    placed: set[int] = field(default_factory=set)  # row ids in a result, dropped or pending group
    fetched: int = 0
    exhausted: bool = False


class ResultPager:
    """Pages of results, each computed afresh when it is turned to, forward or back.

    An answer is a query, not a snapshot: ``page(i)`` fetches the candidates again (``fetch``
    searches the store under the policy of that moment, in what the member may read then),
    ``arrange`` orders and groups them, and ``confirm`` says for each result on page ``i``
    whether it may be shown now (it may also delete what is gone). So whatever was deleted,
    opted out, excluded or hidden since drops out of every page, and the total follows.

    Results before page ``i`` only hold places: those confirmed on an earlier turn of this
    answer keep theirs unasked, those that failed stay dropped, and only new ones are
    confirmed, so a turn costs what its page shows. Reposts are never shown, only counted and
    linked: ``screen`` (when given) says which of them the member may know about.
    """

    def __init__(
        self,
        *,
        fetch: Fetch,
        confirm: Confirm,
        page_size: int,
        arrange: Arrange = one_per_hit,
        screen: Confirm | None = None,
        limit: int = MAX_RESULTS,
        candidates: int = CANDIDATES,
        max_candidates: int = MAX_CANDIDATES,
    ) -> None:
        self.page_size = page_size
        self.limit = limit
        self._fetch = fetch
        self._confirm = confirm
        self._arrange = arrange
        self._screen = screen
        # The first fetch of a turn asks for as many candidates as the last turn needed.
        self._candidates = candidates
        self._max_candidates = max_candidates
        self._held: set[int] = set()  # row ids confirmed on some turn of this answer
        self._dropped: set[int] = set()  # row ids that failed confirmation on some turn
        self._turn = _Turn()

    @property
    def known_total(self) -> int:
        """Results as of the last turn: confirmed, holding their places or waiting to be, all
        from what the member may read now; some waiting ones may still turn out gone."""
        waiting = sum(self._past_dropped(g) is not None for g in self._turn.pending)
        return min(self.limit, len(self._turn.results) + waiting)

    @property
    def more_in_store(self) -> bool:
        return not self._turn.exhausted and self.known_total < self.limit

    @property
    def may_have_more(self) -> bool:
        """Whether results beyond those placed by the last turn may exist."""
        if len(self._turn.results) >= self.limit:
            return False
        return bool(self._turn.pending) or not self._turn.exhausted

    def has_page(self, index: int) -> bool:
        if index < 0:
            return False
        start = index * self.page_size
        return start < len(self._turn.results) or (start < self.limit and self.may_have_more)

    async def page(self, index: int) -> list[ResultGroup]:
        """The results of page ``index`` (0-based), worked out afresh; short or empty past the
        end."""
        start = index * self.page_size
        want = min(start + self.page_size, self.limit)
        turn = self._turn = _Turn()
        for _ in range(ROUNDS):
            if len(turn.results) >= want:
                break
            if not turn.pending and not await self._refill(turn):
                break
            await self._confirm_next(turn, start=start, want=want)
        return await self._screened(turn.results[start:want])

    async def _confirm_next(self, turn: _Turn, *, start: int, want: int) -> None:
        batch: list[ResultGroup] = []
        filled = len(turn.results)
        while turn.pending and filled < want:
            group = self._past_dropped(turn.pending.popleft())
            if group is None:
                continue
            batch.append(group)
            filled += 1
        first = len(turn.results)
        # Failures only move later results forward, so a result due before the page stays
        # before it: one confirmed on an earlier turn keeps its place unasked.
        held = [first + at < start and g.hit.row_id in self._held for at, g in enumerate(batch)]
        asked = [g.hit for g, free in zip(batch, held, strict=True) if not free]
        answers = iter(await self._confirm(asked) if asked else ())
        for at, (group, free) in enumerate(zip(batch, held, strict=True)):
            if free or next(answers):
                turn.results.append(group)
                self._held.add(group.hit.row_id)
                continue
            self._dropped.add(group.hit.row_id)
            if (stand_in := group.promoted()) is not None:
                # Keep the order: the stand-in is confirmed before anything ranked after it.
                turn.pending.extendleft(reversed([stand_in, *batch[at + 1 :]]))
                break

    def _past_dropped(self, group: ResultGroup) -> ResultGroup | None:
        """The group with a copy not dropped before shown in its place, or None if none is."""
        current: ResultGroup | None = group
        while current is not None and current.hit.row_id in self._dropped:
            current = current.promoted()
        return current

    async def _screened(self, groups: list[ResultGroup]) -> list[ResultGroup]:
        groups = [
            ResultGroup(g.hit, tuple(h for h in g.reposts if h.row_id not in self._dropped))
            for g in groups
        ]
        reposts = [h for group in groups for h in group.reposts]
        if not reposts or self._screen is None:
            return groups
        ok = dict(zip((h.row_id for h in reposts), await self._screen(reposts), strict=True))
        screened = [ResultGroup(g.hit, tuple(h for h in g.reposts if ok[h.row_id])) for g in groups]
        return list(await asyncio.gather(*(self._live_earliest(g) for g in screened)))

    async def _live_earliest(self, group: ResultGroup) -> ResultGroup:
        """The earliest repost gets a link, so it must still exist: one deleted while the bot
        was offline is dropped (the check also deletes its vector) and the next one tried."""
        while (earliest := group.earliest) is not group.hit:
            (ok,) = await self._confirm([earliest])
            if ok:
                break
            self._dropped.add(earliest.row_id)
            group = ResultGroup(group.hit, tuple(h for h in group.reposts if h is not earliest))
        return group

    async def _refill(self, turn: _Turn) -> bool:
        """Fetch more candidates; False when the store has nothing new to give."""
        while not turn.exhausted:
            k = self._candidates
            if turn.fetched:
                k = min(turn.fetched * 2, self._max_candidates)
            hits = await self._fetch(k)
            turn.fetched = self._candidates = k
            turn.exhausted = len(hits) < k or k >= self._max_candidates
            fresh = [
                group
                for group in await self._arrange(hits)
                if not any(h.row_id in turn.placed for h in group.members)
            ]
            for group in fresh:
                turn.placed.update(h.row_id for h in group.members)
            turn.pending.extend(fresh)
            if fresh:
                return True
        return False


# -- what the member typed -----------------------------------------------------------------

DATE_HELP = (
    "Use a date like `2025-03-01` (UTC), or how long ago: `7d`, `2w`, `3mo`, `1y`, `12h`, "
    "`today`, `yesterday`."
)
_AGO = re.compile(
    r"^(\d{1,4})\s*(h|hours?|d|days?|w|weeks?|mo|months?|y|years?)(?:\s+ago)?$", re.IGNORECASE
)
_UNIT = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
_UNIT |= {"mo": timedelta(days=30), "y": timedelta(days=365)}


class BadQuery(ValueError):
    """Input the member can fix; the message is written for them."""


def _unreadable(text: str) -> BadQuery:
    return BadQuery(f"I can't read `{text.strip()[:40]}` as a date. {DATE_HELP}")


def parse_when(text: str, *, now: datetime) -> datetime:
    """A moment from a date, a date and time, or how long ago (``7d``); dates are UTC midnight."""
    value = text.strip().lower()
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if value == "today":
        return today
    if value == "yesterday":
        return today - timedelta(days=1)
    if match := _AGO.match(value):
        amount, unit = int(match.group(1)), match.group(2)
        step = _UNIT["mo" if unit.startswith("mo") else unit[0]]
        try:
            return now - amount * step
        except OverflowError:  # further back than the calendar goes (year 1)
            raise _unreadable(text) from None
    try:
        moment = datetime.fromisoformat(value.upper().replace(" ", "T"))
    except ValueError:
        raise _unreadable(text) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def date_range(
    after: str | None, before: str | None, *, now: datetime
) -> tuple[datetime | None, datetime | None]:
    """``after`` is inclusive, ``before`` exclusive, so back-to-back ranges never overlap."""
    start = parse_when(after, now=now) if after else None
    end = parse_when(before, now=now) if before else None
    if start and end and start >= end:
        raise BadQuery("`after` must be earlier than `before`.")
    return start, end


def fit_query(text: str, count_tokens: Callable[[str], int], limit: int) -> tuple[str, bool]:
    """The longest leading part of ``text`` (whole words) that the model reads; True if cut.

    The tokenizer would cut silently anyway; cutting here lets the answer say what was used.
    """
    if count_tokens(text) <= limit:
        return text, False
    words = text.split()
    low, high = 1, len(words)  # the first word alone is kept even if it is too long
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(" ".join(words[:middle])) <= limit:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low]), True


async def image_vector(
    data: bytes, *, encoder: EncoderService, spec: PreprocessSpec, max_pixels: int
) -> np.ndarray:
    """A query picture's vector, decoded and encoded ahead of the indexing backlog. Raises the
    same typed image errors as indexing.

    Always encoded, even for bytes the index holds: a stored vector would answer sooner, and
    so tell the member that the same file was posted somewhere, private channels included."""
    if sniff_image_type(data[:64]) is None:
        raise NotAnImage("the bytes are no PNG, JPEG, WebP or GIF")
    pixels = await asyncio.to_thread(prepare, data, spec, max_pixels=max_pixels)
    return await encoder.encode_query_image(pixels)
