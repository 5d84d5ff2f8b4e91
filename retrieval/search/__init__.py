"""What a search returns, in which order, and how it is paged, with no Discord in sight: the
pager (`pager`), the order and the grouping of reposts (`ranking`), and reading what the member
typed (`query`), and the words inside pictures beside CLIP (`words`)."""

from __future__ import annotations

from retrieval.search.pager import (
    CANDIDATES,
    MAX_CANDIDATES,
    MAX_RESULTS,
    ROUNDS,
    Confirm,
    Fetch,
    Question,
    ResultPager,
    from_store,
)
from retrieval.search.query import (
    DATE_HELP,
    BadQuery,
    date_range,
    fit_query,
    image_vector,
    parse_when,
)
from retrieval.search.ranking import (
    DUPLICATE_SIMILARITY,
    RELEVANCE_FLOOR,
    Arrange,
    ResultGroup,
    Sort,
    arranger,
    collapse_reposts,
    one_per_hit,
    ordered,
    relevance_floor,
)
from retrieval.search.words import (
    RRF_K,
    WordsQuery,
    fuse,
    parse_words,
    push_away,
    snippet,
    text_ranking,
)

__all__ = [
    "RRF_K",
    "WordsQuery",
    "fuse",
    "parse_words",
    "push_away",
    "snippet",
    "text_ranking",
    "CANDIDATES",
    "DATE_HELP",
    "DUPLICATE_SIMILARITY",
    "MAX_CANDIDATES",
    "MAX_RESULTS",
    "RELEVANCE_FLOOR",
    "ROUNDS",
    "Arrange",
    "BadQuery",
    "Confirm",
    "Fetch",
    "Question",
    "ResultGroup",
    "ResultPager",
    "Sort",
    "arranger",
    "collapse_reposts",
    "date_range",
    "fit_query",
    "from_store",
    "image_vector",
    "one_per_hit",
    "ordered",
    "parse_when",
    "relevance_floor",
]
