"""Searching by the words inside pictures beside CLIP: what the query asks of the text, and how
the two rankings become one.

The query syntax, in the normal form of retrieval/encoding/textnorm.py (so typographic quotes and
dashes from phones work, and case never matters):

- ``"deploy failed"``: the picture's text must hold these words, in this order (a substring);
- ``-dog``: pictures whose text holds ``dog`` are left out, and the CLIP query is pushed away
  from what ``dog`` looks like; ``-"hot dog"`` for several words;
- every other word is looked for both ways: CLIP similarity, and the text (a picture whose text
  holds all of them). Both rankings are fused by reciprocal rank (`fuse`).

A query nothing in the text matches ranks as CLIP alone ranks it, with CLIP's own scores.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.encoding.textnorm import normalise
from retrieval.store.base import SearchHit

# Reciprocal rank fusion's constant (Cormack et al. 2009): a hit ranked r adds 1 / (RRF_K + r).
# From 30 to 200 it ranked the same (benchmarks/RESULTS.md, "Fusion").
RRF_K = 60
# The text side's weight, CLIP's being 1. Equal weights interleave the two lists; a heavier text
# side finds a caption's words first but puts pictures that merely say a description's words
# before the pictures that look like it (the same section): kept equal until real CLIP weights
# can be measured.
TEXT_WEIGHT = 1.0
# How far the CLIP query moves away from an excluded word's vector (rclip subtracts it whole; a
# half keeps the rest of the query in charge when several words are excluded).
PUSH_AWAY = 0.5
# Characters of a picture's text shown around the words that matched.
SNIPPET_AROUND = 30

_TOKEN = re.compile(r'(-?)"([^"]*)"?|(\S+)')


@dataclass(frozen=True, slots=True)
class WordsQuery:
    """What a typed query asks: ``clip_text`` for the model, ``phrases`` the picture's text must
    hold, ``excluded`` it must not, ``words`` looked for in the text beside CLIP (normalised)."""

    clip_text: str
    phrases: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    words: tuple[str, ...] = ()

    @property
    def asks_text(self) -> bool:
        return bool(self.phrases or self.words)

    @property
    def plain(self) -> bool:
        """Nothing but words for CLIP and the text alike (no quotes, no exclusions)."""
        return not (self.phrases or self.excluded)

    @property
    def text_words(self) -> tuple[str, ...]:
        """The unquoted words worth looking for in a picture's text: not single letters of
        scripts written with spaces ("a", "I"), which any English text holds."""
        return tuple(w for w in self.words if len(w) > 1 or not w.isascii())

    @property
    def looked_for(self) -> tuple[str, ...]:
        """What a picture's text must hold to be found by it: the quoted phrases and the words."""
        return (*self.phrases, *self.text_words)


def parse_words(query: str) -> WordsQuery:
    """Split a typed query into what CLIP reads and what the text must (not) hold."""
    text = normalise(query)
    clip: list[str] = []
    phrases: list[str] = []
    excluded: list[str] = []
    words: list[str] = []
    for match in _TOKEN.finditer(text):
        minus, quoted, bare = match.group(1), match.group(2), match.group(3)
        if quoted is not None:
            phrase = " ".join(quoted.split())
            if not phrase:
                continue
            if minus:
                excluded.append(phrase)
            else:
                phrases.append(phrase)
                clip.append(phrase)
        elif bare.startswith("-") and len(bare) > 1:
            excluded.append(bare[1:])
        else:
            clip.append(bare)
            words.append(bare)
    return WordsQuery(
        clip_text=" ".join(clip),
        phrases=tuple(dict.fromkeys(phrases)),
        excluded=tuple(dict.fromkeys(excluded)),
        words=tuple(dict.fromkeys(words)),
    )


def push_away(query: np.ndarray, away: Sequence[np.ndarray], weight: float = PUSH_AWAY):
    """The query vector moved away from each vector of ``away``, unit length again."""
    moved = np.asarray(query, dtype=np.float32).copy()
    for vector in away:
        moved -= weight * np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(moved))
    return moved / norm if norm > 0 else np.asarray(query, dtype=np.float32)


def snippet(words: str, phrases: Sequence[str], around: int = SNIPPET_AROUND) -> str:
    """The part of a picture's text around the first phrase found in it, one line."""
    flat = " ".join(words.split())
    for phrase in phrases:
        at = flat.find(phrase) if phrase else -1
        if at < 0:
            continue
        start, end = max(at - around, 0), min(at + len(phrase) + around, len(flat))
        return f"{'…' if start else ''}{flat[start:end]}{'…' if end < len(flat) else ''}"
    return ""


def _whole_word(word: str) -> re.Pattern[str] | None:
    """A word of a script written with spaces is matched whole ("cat" is not in "concatenate");
    Chinese or Japanese, written without spaces, anywhere."""
    if not any(ch.isascii() and ch.isalnum() for ch in word):
        return None
    return re.compile(rf"(?<![^\W_]){re.escape(word)}(?![^\W_])")


def text_ranking(hits: Sequence[SearchHit], words: WordsQuery) -> list[SearchHit]:
    """The text side's ranking of what the store found (each hit's ``says`` its whole text):
    pictures holding each word whole, those saying the words in the order typed first, newest
    first within each; ``says`` cut to the part around what matched."""
    patterns = [p for p in map(_whole_word, words.text_words) if p is not None]
    typed = " ".join(words.text_words)
    ranked: list[tuple[int, int, SearchHit]] = []
    for at, hit in enumerate(hits):
        text = " ".join(hit.says.split())
        if not all(p.search(text) for p in patterns):
            continue
        in_order = 0 if typed and typed in text else 1
        shown = snippet(text, [typed, *words.phrases, *words.text_words])
        ranked.append((in_order, at, dataclasses.replace(hit, says=shown)))
    ranked.sort(key=lambda item: item[:2])
    return [hit for _, _, hit in ranked]


def fuse(
    clip: Sequence[SearchHit],
    text: Sequence[SearchHit],
    k: int = RRF_K,
    text_weight: float = TEXT_WEIGHT,
) -> list[SearchHit]:
    """One ranking from CLIP's and the text's, by reciprocal rank: a hit's score becomes the sum
    of weight / (k + rank) over the rankings it is in (CLIP's weight 1). Hits of the text ranking
    keep what it says (``says``). Without text hits, CLIP's ranking and scores are returned as
    they are."""
    if not text:
        return list(clip)
    fused: dict[int, float] = {}
    found: dict[int, SearchHit] = {}
    for weight, ranking in ((1.0, clip), (text_weight, text)):
        for rank, hit in enumerate(ranking, 1):
            fused[hit.row_id] = fused.get(hit.row_id, 0.0) + weight / (k + rank)
            if hit.row_id not in found or hit.says:
                found[hit.row_id] = hit
    cosine = {hit.row_id: hit.score for hit in clip}
    order = sorted(fused, key=lambda row_id: -fused[row_id])
    return [dataclasses.replace(found[i], score=fused[i], similarity=cosine.get(i)) for i in order]


__all__ = [
    "PUSH_AWAY",
    "RRF_K",
    "TEXT_WEIGHT",
    "WordsQuery",
    "fuse",
    "parse_words",
    "push_away",
    "snippet",
    "text_ranking",
]
