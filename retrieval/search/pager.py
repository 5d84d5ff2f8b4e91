"""Pages of results, each worked out afresh when it is turned to.

The store answers from the index, which can be stale: a message may have been deleted while the
bot was offline. So the pager asks the store for more candidates than it shows, has the caller
confirm each one just before it is shown (``confirm`` does the Discord look-ups), and tops a
page up from the candidates behind it. Every page is worked out afresh, forward and back: the
store is asked again, under the policy and in the channels the member may read at that moment.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from retrieval.search.ranking import Arrange, ResultGroup, one_per_hit
from retrieval.search.words import WordsQuery, fuse, text_ranking
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

Fetch = Callable[[int], Awaitable[list[SearchHit]]]
Confirm = Callable[[Sequence[SearchHit]], Awaitable[Sequence[bool]]]


def from_store(store: VectorStore, query: np.ndarray, scope: SearchScope) -> Fetch:
    async def fetch(k: int) -> list[SearchHit]:
        return await store.search(query, scope=scope, k=k)

    return fetch


@dataclass(frozen=True, slots=True)
class Question:
    """What was asked, apart from where it may look: asked of the store again each time the
    channels the member may read are worked out again (every page turn).

    With ``words`` (a typed query), the words are also looked for in the pictures' text, and
    both rankings are fused (retrieval/search/words.py); its quoted phrases and exclusions are
    in ``scope`` (``words_all``, ``words_none``), applied to both sides inside the store."""

    store: VectorStore
    query: np.ndarray
    scope: SearchScope  # the filters; the channels are given per search
    words: WordsQuery | None = None

    async def search(self, channel_ids: Collection[int], k: int) -> list[SearchHit]:
        scope = replace(self.scope, channel_ids=frozenset(channel_ids))
        if self.words is None or not self.words.looked_for:
            return await self.store.search(self.query, scope=scope, k=k)
        # Both sides at once: each is its own statement, on its own connection.
        async with asyncio.TaskGroup() as sides:
            clip = sides.create_task(self.store.search(self.query, scope=scope, k=k))
            text = sides.create_task(
                self.store.words_matching(scope=scope, all_of=self.words.looked_for, k=k)
            )
        # The first k of the fused ranking are all there is to use: a text hit ranked past k
        # scores less than each of CLIP's first k, so the text side asks k rows, no more.
        return fuse(clip.result(), text_ranking(text.result(), self.words))[:k]

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
