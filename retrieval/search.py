"""What a search returns, in which order, and how it is paged, with no Discord in sight.

The store answers from the index, which can be stale: a message may have been deleted while the
bot was offline, or a private thread may not include the member after all. So the pager asks
the store for more candidates than it shows, has the caller confirm each one just before it is
shown (``confirm`` does the Discord look-ups), and tops a page up from the candidates behind it.
Before paging, candidates are ordered (relevance, or date above a relevance floor) and reposts
of one picture are collapsed into one result.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
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
    """Order candidates and collapse reposts, reading their vectors from the store."""

    async def arrange(hits: list[SearchHit]) -> list[ResultGroup]:
        ranked = ordered(hits, sort)
        if not ranked:
            return []
        guilds = {h.guild_id for h in ranked}
        vectors = await store.vectors(
            [h.row_id for h in ranked], guild_id=guilds.pop() if len(guilds) == 1 else None
        )
        return await asyncio.to_thread(collapse_reposts, ranked, vectors, threshold)

    return arrange


class ResultPager:
    """Pages of confirmed results, confirmed lazily: only what is about to be shown.

    ``fetch(k)`` returns the best k hits, ``arrange`` orders and groups them, and ``confirm``
    says for each hit whether it may be shown now (it may also delete what is gone). Reposts
    are never shown, only counted and linked: ``screen`` (when given) says which of them the
    member may know about.
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
        self.shown: list[ResultGroup] = []
        self._fetch = fetch
        self._confirm = confirm
        self._arrange = arrange
        self._screen = screen
        self._pending: deque[ResultGroup] = deque()
        self._placed: set[int] = set()  # row ids already in a shown, dropped or pending group
        self._candidates = candidates
        self._max_candidates = max_candidates
        self._fetched = 0
        self._exhausted = False

    @property
    def known_total(self) -> int:
        """Results confirmed or waiting to be; some waiting ones may still turn out gone."""
        return min(self.limit, len(self.shown) + len(self._pending))

    @property
    def more_in_store(self) -> bool:
        return not self._exhausted and self.known_total < self.limit

    @property
    def may_have_more(self) -> bool:
        """Whether results beyond those confirmed may exist (pending or not yet fetched)."""
        if len(self.shown) >= self.limit:
            return False
        return bool(self._pending) or not self._exhausted

    def has_page(self, index: int) -> bool:
        if index < 0:
            return False
        start = index * self.page_size
        return start < len(self.shown) or (start < self.limit and self.may_have_more)

    async def page(self, index: int) -> list[ResultGroup]:
        """The results of page ``index`` (0-based); short or empty past the end."""
        want = min((index + 1) * self.page_size, self.limit)
        for _ in range(ROUNDS):
            if len(self.shown) >= want:
                break
            if not self._pending and not await self._refill():
                break
            await self._confirm_next(want - len(self.shown))
        return self.shown[index * self.page_size : want]

    async def revise(self) -> None:
        """What may be shown changed (``confirm`` and ``screen`` now answer for someone else, or
        for the same member after their roles changed): results already shown are screened
        again, and those no longer allowed are dropped; a repost that still is stands in."""
        if self._screen is None or not self.shown:
            return
        allowed = await self._screen([group.hit for group in self.shown])
        kept, stand_ins = [], []
        for group, ok in zip(self.shown, allowed, strict=True):
            if ok:
                kept.append(group)
            elif (stand_in := group.promoted()) is not None:
                stand_ins.append(stand_in)
        # Stand-ins are confirmed like any candidate, ahead of those ranked after them.
        self._pending.extendleft(reversed(stand_ins))
        self.shown = await self._screened(kept)

    async def _confirm_next(self, need: int) -> None:
        batch = [self._pending.popleft() for _ in range(min(need, len(self._pending)))]
        verdicts = await self._confirm([group.hit for group in batch])
        accepted = []
        for at, (group, ok) in enumerate(zip(batch, verdicts, strict=True)):
            if ok:
                accepted.append(group)
                continue
            if (stand_in := group.promoted()) is not None:
                # Keep the order: the stand-in is confirmed before anything ranked after it.
                self._pending.extendleft(reversed([stand_in, *batch[at + 1 :]]))
                break
        self.shown.extend(await self._screened(accepted))

    async def _screened(self, groups: list[ResultGroup]) -> list[ResultGroup]:
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
            group = ResultGroup(group.hit, tuple(h for h in group.reposts if h is not earliest))
        return group

    async def _refill(self) -> bool:
        """Fetch more candidates; False when the store has nothing new to give."""
        while not self._exhausted:
            k = self._candidates
            if self._fetched:
                k = min(self._fetched * 2, self._max_candidates)
            hits = await self._fetch(k)
            self._fetched = k
            self._exhausted = len(hits) < k or k >= self._max_candidates
            fresh = [
                group
                for group in await self._arrange(hits)
                if not any(h.row_id in self._placed for h in group.members)
            ]
            for group in fresh:
                self._placed.update(h.row_id for h in group.members)
            self._pending.extend(fresh)
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
