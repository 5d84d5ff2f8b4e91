"""Reading a query for the words inside pictures, and fusing the text's ranking with CLIP's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from retrieval.search import (
    WordsQuery,
    collapse_reposts,
    fuse,
    ordered,
    parse_words,
    push_away,
    snippet,
    text_ranking,
)
from retrieval.store import SearchHit
from tests.db.test_search_logic import hit as logic_hit


def hit(row_id: int, score: float = 0.5, says: str = "", content_hash: str = "") -> SearchHit:
    return dataclasses.replace(logic_hit(row_id, score, content_hash=content_hash), says=says)


@pytest.mark.parametrize(
    ("typed", "clip_text", "phrases", "excluded", "words"),
    [
        ("a red circle", "a red circle", (), (), ("a", "red", "circle")),
        ('"Deploy failed" friday', "deploy failed friday", ("deploy failed",), (), ("friday",)),
        ("dog -cat", "dog", (), ("cat",), ("dog",)),
        ('meme -"hot dog"', "meme", (), ("hot dog",), ("meme",)),
        # Phones type typographic quotes and dashes; a hyphen inside a word is no exclusion.
        (
            "\u201cmerge on friday\u201d \u2013cat",
            "merge on friday",
            ("merge on friday",),
            ("cat",),
            (),
        ),
        ("x-ray", "x-ray", (), (), ("x-ray",)),
        ('"unclosed quote', "unclosed quote", ("unclosed quote",), (), ()),
        ('"" -', "-", (), (), ("-",)),
        # Chinese has no spaces between words: one typed is not one in the text either.
        ("周五 部署失败", "周五部署失败", (), (), ("周五部署失败",)),
    ],
)
def test_a_query_is_split_into_what_clip_reads_and_what_the_text_must_hold(
    typed, clip_text, phrases, excluded, words
):
    assert parse_words(typed) == WordsQuery(clip_text, phrases, excluded, words)


def test_single_letters_are_not_looked_for_in_the_text():
    assert parse_words("a red circle").text_words == ("red", "circle")
    assert parse_words('I "a" 猫').looked_for == ("a", "猫")


def test_push_away_moves_the_query_from_the_excluded_and_keeps_unit_length():
    dog, cat = np.eye(4, dtype=np.float32)[:2]
    query = (dog + cat) / np.linalg.norm(dog + cat)
    moved = push_away(query, [cat])
    assert np.isclose(np.linalg.norm(moved), 1.0)
    assert moved @ cat < query @ cat and moved @ dog > query @ dog


def test_the_snippet_is_the_text_around_what_matched():
    text = "first line\nthen the deploy failed on friday at noon, as it always does on fridays"
    shown = snippet(text, ["deploy failed"], around=10)
    assert shown == "… then the deploy failed on friday…"
    assert snippet("deploy failed", ["deploy failed"]) == "deploy failed"
    assert snippet("nothing here", ["deploy"]) == ""
    # A query of quoted words only types no other words: nothing empty is looked for.
    assert snippet("x" * 50 + " deploy failed", ["", "failed"], around=7) == "…deploy failed"


def test_the_text_ranking_wants_whole_words_and_puts_the_typed_order_first():
    words = parse_words("cat tax")
    hits = [
        hit(1, says="concatenate taxes"),  # substrings only: not the words
        hit(2, says="tax on the cat"),
        hit(3, says="the cat tax is due"),
        hit(4, says="猫 cat, tax"),
    ]
    ranked = text_ranking(hits, words)
    assert [h.row_id for h in ranked] == [3, 2, 4]
    assert ranked[0].says == "the cat tax is due"


def test_chinese_words_match_anywhere_in_the_text():
    ranked = text_ranking([hit(1, says="周五部署失败了")], parse_words("部署失败"))
    assert [h.row_id for h in ranked] == [1]


def test_fusion_without_text_hits_is_clips_ranking_with_its_scores():
    clip = [hit(1, 0.9), hit(2, 0.8), hit(3, 0.7)]
    assert fuse(clip, []) == clip


def test_fusion_ranks_by_reciprocal_rank_and_keeps_what_the_text_says():
    clip = [hit(1, 0.9), hit(2, 0.8), hit(3, 0.7)]
    text = [hit(3, 1.0, says="deploy failed"), hit(4, 1.0, says="deploy failed again")]
    fused = fuse(clip, text)
    assert [h.row_id for h in fused] == [3, 1, 2, 4]  # 2 and 4 tie: CLIP's first
    assert fused[0].score == pytest.approx(1 / 63 + 1 / 61)
    assert (fused[0].says, fused[0].similarity) == ("deploy failed", 0.7)
    assert fused[3].similarity is None and fused[3].says  # found by its words alone


def test_a_heavier_text_side_puts_what_the_text_found_before_clips_guesses():
    """Equal weights interleave a picture found by its words alone with CLIP's best (each first
    of its list); the text side's weight (benchmarks/fusion.py measures it) decides which leads."""
    clip = [hit(1, 0.9), hit(2, 0.8)]
    text = [hit(4, 1.0, says="deploy failed")]
    assert [h.row_id for h in fuse(clip, text)] == [1, 4, 2]
    assert [h.row_id for h in fuse(clip, text, text_weight=2.0)] == [4, 1, 2]
    assert [h.row_id for h in fuse(clip, text, text_weight=0.5)] == [1, 2, 4]


def test_pictures_that_look_alike_but_say_different_things_are_not_reposts():
    vector = np.ones(4, dtype=np.float32) / 2
    hits = [hit(1), hit(2), hit(3), hit(4)]
    vectors = {h.row_id: vector for h in hits}
    words = {1: "when the build passes", 2: "when the build fails", 3: "when the build passes"}
    groups = collapse_reposts(hits, vectors, 0.995, words)
    # 4 was not read yet: nothing tells it apart from the first.
    assert [[h.row_id for h in g.members] for g in groups] == [[1, 3, 4], [2]]
    same = [dataclasses.replace(h, content_hash="same") for h in hits[:2]]
    assert len(collapse_reposts(same, vectors, 0.995, words)) == 1  # the same bytes are one


def test_date_order_keeps_what_the_text_found_and_what_clip_finds_close_enough():
    """With the words searched too, the scores are fused ranks: a date sort keeps every picture
    found by its words, and of the others those within the floor of CLIP's best similarity."""
    clip = [hit(1, 0.9), hit(2, 0.5), hit(3, 0.88)]
    text = [hit(4, 1.0, says="deploy failed")]
    fused = fuse(clip, text)
    assert {h.row_id for h in ordered(fused, "newest")} == {1, 3, 4}
    # Without text hits, as before: the floor of the best score.
    assert {h.row_id for h in ordered(clip, "newest")} == {1, 3}
