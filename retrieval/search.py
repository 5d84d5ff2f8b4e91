"""What a search returns and how it is paged, with no Discord in sight.

The store answers from the index, which can be stale: a message may have been deleted while the
bot was offline, or a private thread may not include the member after all. So the pager asks
the store for more candidates than it shows, has the caller confirm each one just before it is
shown (``confirm`` does the Discord look-ups), and tops a page up from the candidates behind it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

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
Arrange = Callable[[list[SearchHit]], list[ResultGroup]]


def from_store(store: VectorStore, query: np.ndarray, scope: SearchScope) -> Fetch:
    async def fetch(k: int) -> list[SearchHit]:
        return await store.search(query, scope=scope, k=k)

    return fetch


def one_per_hit(hits: list[SearchHit]) -> list[ResultGroup]:
    return [ResultGroup(hit) for hit in hits]


class ResultPager:
    """Pages of confirmed results, confirmed lazily: only what is about to be shown.

    ``fetch(k)`` returns the best k hits, ``arrange`` orders and groups them, and ``confirm``
    says for each hit whether it may be shown now (it may also delete what is gone).
    """

    def __init__(
        self,
        *,
        fetch: Fetch,
        confirm: Confirm,
        page_size: int,
        arrange: Arrange = one_per_hit,
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
        self._pending: deque[ResultGroup] = deque()
        self._placed: set[int] = set()  # row ids already in a shown, dropped or pending group
        self._candidates = candidates
        self._max_candidates = max_candidates
        self._fetched = 0
        self._exhausted = False

    @property
    def pages_known(self) -> int:
        """Pages that can be shown as far as is known now (the last may turn out shorter)."""
        total = min(self.limit, len(self.shown) + len(self._pending))
        return max(1, -(-total // self.page_size))

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

    async def _confirm_next(self, need: int) -> None:
        batch = [self._pending.popleft() for _ in range(min(need, len(self._pending)))]
        verdicts = await self._confirm([group.hit for group in batch])
        for at, (group, ok) in enumerate(zip(batch, verdicts, strict=True)):
            if ok:
                self.shown.append(group)
                continue
            if (stand_in := group.promoted()) is not None:
                # Keep the order: the stand-in is confirmed before anything ranked after it.
                self._pending.extendleft(reversed([stand_in, *batch[at + 1 :]]))
                return

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
                for group in self._arrange(hits)
                if not any(h.row_id in self._placed for h in group.members)
            ]
            for group in fresh:
                self._placed.update(h.row_id for h in group.members)
            self._pending.extend(fresh)
            if fresh:
                return True
        return False
